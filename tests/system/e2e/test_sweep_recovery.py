"""A sweep through the API and a real `manage.py qcluster`: its worker killed with SIGKILL mid-sweep
loses nothing (the finished member stays finished, the one that was training resumes from its
checkpoint, the rest train, and the pass over the corpus is not run again), and a cancelled sweep
stops its running member within seconds and never starts the others."""
import os
import signal
import time

import pytest

from tests.model_fixtures import SAMPLE_CORPUS
from tests.system.e2e.test_crash_recovery import STEADY
from tests.system.e2e.test_worker_process import worker  # noqa: F401 (fixture)
from training.models import Sweep, TrainingJob

pytestmark = pytest.mark.django_db(transaction=True)

SWEEP = {"model_name": "tiny/gpt2", "corpus_file": SAMPLE_CORPUS.name, "layer_number": 1, "max_sequence_length": 16,
         "sae_batch_tokens": 256, "learning_rate": 0.001, "architecture": "topk", "k": 8, "hidden_dim": 256,
         "max_epochs": 10, "min_loss": 0, "members": [{}, {"k": 16}, {"k": 4}]}


@pytest.fixture
def worker_env():
    return STEADY


def members(sweep_id):
    return list(TrainingJob.objects.filter(sweep_id=sweep_id).order_by("created_at", "pk"))


def wait_until(predicate, what, timeout_s=240):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"never: {what}")


def start(api, upload, **fields):
    assert upload(SAMPLE_CORPUS.name, SAMPLE_CORPUS.read_bytes()).status_code == 200
    response = api.post("/api/v1/sweeps", {**SWEEP, **fields}, format="json")
    assert response.status_code == 201, response.json()
    return response.json()["sweep_id"]


@pytest.mark.slow
def test_a_sweep_whose_worker_is_killed_resumes_every_unfinished_member(alice_api, upload, worker):
    sweep_id = start(alice_api, upload)

    def second_has_a_checkpoint():
        first, second, _ = members(sweep_id)
        return first.status == "completed" and second.status == "running" and second.checkpoints.exists() and second

    second = wait_until(second_has_a_checkpoint, "the second member training with a checkpoint")
    forward_batches = Sweep.objects.get(pk=sweep_id).lm_forward_batches
    assert forward_batches and second.worker_pid != worker.pid
    os.kill(second.worker_pid, signal.SIGKILL)

    document = wait_until(lambda: (d := alice_api.get(f"/api/v1/sweeps/{sweep_id}").json())["status"] not in (
        "queued", "running") and d, "the sweep to end")
    assert document["status"] == "completed", document
    first, second, third = members(sweep_id)
    assert (first.attempts, second.attempts, third.attempts) == (1, 2, 2)
    assert [run["ended"] for run in second.runs] == ["worker lost", "completed"]
    assert second.training_stats["total_epochs"] == SWEEP["max_epochs"]
    # The resumed run read the site's file the first run extracted: no second pass over the corpus.
    assert Sweep.objects.get(pk=sweep_id).lm_forward_batches == forward_batches
    assert [run["extraction_seconds"] for run in second.runs][1] is None
    assert first.activations_path == second.activations_path == third.activations_path


@pytest.mark.slow
def test_cancelling_a_running_sweep_stops_its_member_and_never_starts_the_rest(alice_api, upload, worker):
    sweep_id = start(alice_api, upload, max_epochs=100000)
    wait_until(lambda: members(sweep_id)[0].current_epoch >= 2, "the first member training")
    assert alice_api.post(f"/api/v1/sweeps/{sweep_id}/cancel").status_code == 200
    document = wait_until(lambda: (d := alice_api.get(f"/api/v1/sweeps/{sweep_id}").json())["status"] == "cancelled"
                          and d, "the sweep cancelled", timeout_s=60)
    assert document["members_by_status"] == {"cancelled": 3}
    first, second, third = members(sweep_id)
    assert "checkpoints kept" in first.message
    assert second.attempts == 1 and second.started_at is not None  # claimed by the sweep's task, never trained
    assert not second.checkpoints.exists() and not third.checkpoints.exists()
    assert second.message == third.message == "Cancelled before its turn in the sweep; nothing was trained"
