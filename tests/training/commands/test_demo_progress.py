"""`make demo` follows its job on one progress bar that ends with how the job ended, not a line per
change. The job row changes as a worker would change it, between the command's polls."""
import io

import pytest

from training.management.commands import demo
from training.models import TrainingJob

pytestmark = pytest.mark.django_db

# What a worker writes over a run, one state per poll: (status, phase, progress, loss, message).
STATES = [
    ("running", "loading_model", 0.0, None, "Loading tiny/gpt2"),
    ("running", "extracting_activations", 0.1, None, "Extracting activations: 10/100 sequences"),
    ("running", "extracting_activations", 0.2, None, "Extracting activations: 20/100 sequences"),
    ("running", "training", 0.5, 0.25, "Epoch 1/2"),
    ("running", "training", 0.9, 0.125, "Epoch 2/2"),
    ("completed", "done", 1.0, 0.125, "Training completed"),
]


@pytest.fixture
def job(alice):
    return TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2", layer_number=1)


@pytest.fixture
def worker_between_polls(job, monkeypatch):
    """Each of the command's one-second waits is a step of the run instead."""
    steps = iter(STATES)

    def step(_seconds):
        status, phase, progress, loss, message = next(steps)
        evaluation = {"explained_variance": 0.8125, "l0": 32.0} if status == "completed" else None
        TrainingJob.objects.filter(pk=job.pk).update(status=status, phase=phase, progress=progress, current_loss=loss,
                                                     message=message, evaluation=evaluation)

    monkeypatch.setattr(demo.time, "sleep", step)


def test_the_demo_follows_its_job_on_one_bar_that_ends_with_the_result(job, worker_between_polls):
    err = io.StringIO()
    followed = demo.Command(stderr=err)._follow(job.id, timeout_s=60)
    assert followed.status == "completed"
    bar, result = err.getvalue().rstrip("\n").split("\n")
    frames = [frame for frame in bar.split("\r") if frame]
    assert len(frames) >= len(STATES)  # one carriage-return update per poll, on one line
    assert "Extracting activations: 10/100 sequences" in bar and "loss 0.125" in bar
    assert frames[-1].startswith("done: 100%")
    assert "[running]" not in err.getvalue()
    assert result == f"{job.id} completed: Training completed (explained_variance 0.8125, l0 32)"
