"""Through the API and a real `manage.py qcluster` process, as a user would run it."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from mistudio.database import database_url
from tests.model_fixtures import SAMPLE_CORPUS

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def worker_env():
    return {}


def worker_process_env(settings, **extra):
    """The environment of a worker the tests start: the test database, data folders and key."""
    return {
        **os.environ,
        "DATABASE_URL": database_url(connection.settings_dict),
        "MISTUDIO_DATA_DIR": str(settings.DATA_DIR),
        "MISTUDIO_MODELS_DIR": str(settings.MODELS_DIR),
        "MISTUDIO_SECRET_KEY": settings.SECRET_KEY,
        "MISTUDIO_QUEUE_POLL_S": "0.2",
        "MISTUDIO_PROGRESS_INTERVAL_S": "0.2",
        **extra,
    }


def start_cluster(command, env, log_path):
    log = open(log_path, "wb")
    process = subprocess.Popen([sys.executable, "manage.py", *command], cwd=ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    process.log = log
    return process


def stop_cluster(process, timeout_s=30):
    # The cluster's parent stops its workers in order; a signal to the whole group races that.
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    process.log.close()


@pytest.fixture
def worker(settings, hub_models, tmp_path, worker_env):
    env = worker_process_env(settings, **{"MISTUDIO_CHECKPOINT_EVERY_EPOCHS": "1", **worker_env})
    process = start_cluster(["qcluster"], env, tmp_path / "qcluster.log")
    yield process
    # What the test checked is done. django-q2's stop can wait forever when a task it fetched ahead
    # sits in its local queue and no worker is left to take the stop pill after it (a recycled
    # worker that just exited: django-q2 issue 23, Koed00/django-q 200), so it gets 10 s, not 30.
    stop_cluster(process, timeout_s=10)


def wait_for(api, job_id, predicate, timeout_s=180):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = api.get(f"/api/v1/train/{job_id}/status").json()
        if predicate(status):
            return status
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never got there; last status: {status}")


def submit(api, **fields):
    body = {"model_name": "tiny/gpt2", "corpus_file": SAMPLE_CORPUS.name, "layer_number": 1, "hidden_dim": 64,
            "max_sequence_length": 16, "sae_batch_tokens": 256, "learning_rate": 0.001, **fields}
    response = api.post("/api/v1/train", body, format="json")
    assert response.status_code == 200, response.json()
    return response.json()["job_id"]


@pytest.mark.slow
def test_jobs_train_in_order_in_a_real_worker_and_a_running_job_can_be_cancelled(alice_api, upload, worker):
    assert upload(SAMPLE_CORPUS.name, SAMPLE_CORPUS.read_bytes()).status_code == 200
    first = submit(alice_api, max_epochs=3, min_loss=0)
    second = submit(alice_api, max_epochs=2, min_loss=0, architecture="jumprelu", target_l0=8)

    seen = wait_for(alice_api, first, lambda s: s["status"] in ("running", "completed", "failed"))
    assert seen["status"] != "failed", seen
    done = wait_for(alice_api, second, lambda s: s["status"] in ("completed", "failed"))
    assert done["status"] == "completed", done
    first_status = alice_api.get(f"/api/v1/train/{first}/status").json()
    assert first_status["status"] == "completed"
    # One at a time, in the order they came.
    assert done["started_at"] >= first_status["completed_at"]

    second_result = alice_api.get(f"/api/v1/train/{second}/result").json()
    assert second_result["architecture"] == "jumprelu"
    assert second_result["evaluation"]["ce_loss_recovered"] is not None  # tiny/gpt2 is a causal LM

    result = alice_api.get(f"/api/v1/train/{first}/result").json()
    assert result["status"] == "completed" and result["ready_for_find_service"] is True
    assert result["training_stats"]["total_epochs"] == 3
    # Named after the run that wrote them (its attempt: training.services.job_checkpoint_prefix).
    assert [Path(p).name for p in result["checkpoints"]] == [f"{first}_attempt-1_checkpoint_{e}.pt" for e in (1, 2, 3)]
    for path in (result["model_path"], result["activations_path"], result["metadata_path"], *result["checkpoints"]):
        assert Path(path).is_file()

    # A long job: cancel it once it is training and has a checkpoint; it stops within seconds.
    long_job = submit(alice_api, max_epochs=100000, min_loss=0)
    running = wait_for(alice_api, long_job, lambda s: s["status"] == "running" and s["last_checkpoint"] and s["current_epoch"] >= 1)
    assert running["device"] == "cpu" and running["current_epoch"] >= 1
    assert "Epoch" in running["message"] and running["estimated_time_remaining"] is not None
    asked = time.monotonic()
    assert alice_api.post(f"/api/v1/train/{long_job}/cancel").json()["message"].startswith("Cancellation requested")
    stopped = wait_for(alice_api, long_job, lambda s: s["status"] != "running", timeout_s=30)
    assert stopped["status"] == "cancelled"
    assert time.monotonic() - asked < 15
    assert Path(stopped["last_checkpoint"]).is_file()
