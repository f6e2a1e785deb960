"""A worker killed mid-training (SIGKILL, as the kernel's OOM killer does) loses no job: the next
worker resumes it from its last checkpoint and it ends as an uninterrupted run would."""
import os
import signal

import pytest

from tests.conftest import SAMPLE_CORPUS
from tests.e2e.test_worker_process import submit, wait_for, worker  # noqa: F401 (fixture)
from training.models import TrainingJob

pytestmark = pytest.mark.django_db(transaction=True)

JOB = dict(max_epochs=30, min_loss=0, hidden_dim=256, architecture="topk", k=8)


@pytest.fixture
def worker_env():
    # Enough optimizer steps that an epoch lasts long enough to be interrupted.
    # Dense decoding pinned: a timed choice could differ between the reference job and the other.
    # One BLAS thread: multi-threaded float reductions may differ from run to run under load.
    return {"MISTUDIO_MIN_SAE_STEPS": "3000", "MISTUDIO_TOPK_DECODE": "dense", "OMP_NUM_THREADS": "1"}


def finished(status):
    return status["status"] in ("completed", "failed", "cancelled")


def test_a_job_whose_worker_is_killed_resumes_and_ends_like_an_uninterrupted_one(alice_api, upload, worker):
    assert upload(SAMPLE_CORPUS.name, SAMPLE_CORPUS.read_bytes()).status_code == 200
    reference = submit(alice_api, **JOB)
    assert wait_for(alice_api, reference, finished)["status"] == "completed"

    killed = submit(alice_api, **JOB)
    wait_for(alice_api, killed, lambda s: s["status"] == "running" and s["current_epoch"] >= 4 and s["last_checkpoint"])
    job = TrainingJob.objects.get(pk=killed)
    assert job.worker_pid and job.worker_pid != worker.pid  # a worker process, not the cluster
    os.kill(job.worker_pid, signal.SIGKILL)

    done = wait_for(alice_api, killed, finished)
    assert done["status"] == "completed", done
    job.refresh_from_db()
    assert job.attempts == 2
    assert job.training_stats["total_epochs"] == JOB["max_epochs"]
    expected = TrainingJob.objects.get(pk=reference).training_stats["final_loss"]
    # The same order, weights, optimizer moments and dead-feature counters: the same end, up to the
    # float noise of a different process.
    assert job.training_stats["final_loss"] == pytest.approx(expected, rel=1e-3)
    # Both runs extracted once: the resumed run reused the first run's activations.
    assert job.activations_path.endswith(f"{killed}_activations.npy")
