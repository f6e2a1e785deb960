"""A job whose activations stream (no cache) survives its worker's SIGKILL: the next worker resumes
it from its last checkpoint at the corpus position it had reached, and it trains on the same tokens
and ends as an uninterrupted run does."""
import os
import signal

import pytest

from tests.model_fixtures import SAMPLE_CORPUS
from tests.system.e2e.test_crash_recovery import STEADY, finished
from tests.system.e2e.test_worker_process import submit, wait_for, worker  # noqa: F401 (fixture)
from training.models import TrainingJob

pytestmark = pytest.mark.django_db(transaction=True)

# "never": every epoch runs the model again, so several epochs stream and a kill lands mid-run.
JOB = dict(max_epochs=6, min_loss=0, hidden_dim=256, architecture="topk", k=8, cache_activations="never")


@pytest.fixture
def worker_env():
    return STEADY


@pytest.mark.slow
def test_a_streamed_job_whose_worker_is_killed_resumes_on_the_same_tokens(alice_api, upload, worker):
    assert upload(SAMPLE_CORPUS.name, SAMPLE_CORPUS.read_bytes()).status_code == 200
    reference = submit(alice_api, **JOB)
    assert wait_for(alice_api, reference, finished)["status"] == "completed"

    killed = submit(alice_api, **JOB)
    wait_for(alice_api, killed, lambda s: s["status"] == "running" and s["current_epoch"] >= 3 and s["last_checkpoint"])
    job = TrainingJob.objects.get(pk=killed)
    os.kill(job.worker_pid, signal.SIGKILL)

    done = wait_for(alice_api, killed, finished)
    assert done["status"] == "completed", done
    job.refresh_from_db()
    expected = TrainingJob.objects.get(pk=reference).training_stats
    assert job.attempts == 2 and not job.activations_path
    assert job.training_stats["activations_cached"] is False
    assert job.training_stats["tokens_trained"] == expected["tokens_trained"]
    assert job.training_stats["total_epochs"] == JOB["max_epochs"]
    assert job.training_stats["final_loss"] == pytest.approx(expected["final_loss"], rel=1e-3)
