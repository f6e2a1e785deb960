"""A job that trains while it extracts (MISTUDIO_OVERLAP_EXTRACTION) through the real pipeline."""
import numpy as np
import pytest

from engine.activations.cache import arrival_path
from tests.training.worker.test_clear_failures import run

pytestmark = pytest.mark.django_db(transaction=True)

FIELDS = dict(model_name="tiny/gpt2", layer_number=1, hidden_dim=32, max_epochs=2, min_loss=0,
              max_sequence_length=16, architecture="topk", k=4)


@pytest.mark.slow
def test_an_overlapped_job_completes_and_says_so(alice, hub_models, settings):
    settings.OVERLAP_EXTRACTION = "on"
    settings.SHUFFLE_BUFFER_TOKENS = 512
    job = run(alice, **FIELDS)
    assert job.status == "completed", job.message
    extraction = job.training_stats["extraction"]
    assert extraction["overlapped_with_training"] is True
    cache = np.load(job.activations_path, mmap_mode="r")
    assert cache.shape[0] == extraction["tokens"]
    order = np.load(arrival_path(job.activations_path))
    assert sorted(order.tolist()) == list(range(len(order)))
    assert job.evaluation["l0"] == pytest.approx(4.0)
    assert len(job.training_curve) >= 2


@pytest.mark.slow
def test_with_overlap_off_it_extracts_first(alice, hub_models, settings):
    settings.OVERLAP_EXTRACTION = "off"
    job = run(alice, **FIELDS)
    assert job.status == "completed", job.message
    assert job.training_stats["extraction"]["overlapped_with_training"] is False


@pytest.mark.slow
@pytest.mark.parametrize("where", ["extraction", "training"])
def test_out_of_memory_in_an_overlapped_job_names_the_part_that_ran_out(alice, hub_models, settings, monkeypatch, where):
    import torch

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    settings.OVERLAP_EXTRACTION = "on"
    settings.SHUFFLE_BUFFER_TOKENS = 512
    monkeypatch.setattr("engine.activations.extract.capture_batches" if where == "extraction" else "engine.trainer.step.Run.step",
                        exhausted)
    job = run(alice, **FIELDS)
    assert job.status == "failed"
    phase = "extracting activations" if where == "extraction" else "training"
    assert f"Out of memory during {phase}" in job.message, job.message
    # Nothing half-written is left as the job's cache.
    assert not list((settings.DATA_DIR / "activations").glob("*.partial*"))


@pytest.mark.slow
def test_the_cache_is_recorded_on_the_job_before_training_ends(alice, hub_models, settings, monkeypatch):
    """A worker killed in a later epoch resumes from the cache instead of extracting again."""
    from engine.trainer.step import Run
    from training.models import TrainingJob

    settings.OVERLAP_EXTRACTION = "on"
    settings.SHUFFLE_BUFFER_TOKENS = 512
    recorded = []
    step = Run.step

    def watching(self, x, target=None):
        recorded.append((self.state.epochs_done, TrainingJob.objects.values_list("activations_path", flat=True).get()))
        return step(self, x, target)

    monkeypatch.setattr(Run, "step", watching)
    job = run(alice, **FIELDS)
    assert job.status == "completed", job.message
    second_epoch = [path for epochs_done, path in recorded if epochs_done == 1]
    assert second_epoch and all(path == job.activations_path for path in second_epoch)
