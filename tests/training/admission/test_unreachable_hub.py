"""A hub that cannot be reached at all (the name does not resolve, the connection is refused, or
HF_HUB_OFFLINE is set) is a prompt 400, not a wait for MISTUDIO_HUB_TIMEOUT_S; a slow hub still
gets the timeout (tests/engine/models/test_resolve.py)."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from huggingface_hub import constants as hub_constants
import pytest

from tests.django_fixtures import own_sqlite_database
from tests.model_fixtures import SAMPLE_CORPUS
from tests.network import outside_network_blocked  # noqa: F401 (fixture)
from training.models import TrainingJob

ROOT = Path(__file__).resolve().parents[3]
HUB_TIMEOUT_S = 60


@pytest.fixture
def hub_off(settings, monkeypatch, outside_network_blocked):
    settings.HUB_TIMEOUT_S = HUB_TIMEOUT_S
    # HF_HUB_OFFLINE=1 as the process started with it: huggingface_hub reads it at import.
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)


@pytest.mark.django_db
def test_with_hf_hub_offline_train_and_validate_answer_at_once(alice_api, upload, sample_corpus_bytes, hub_off):
    upload("reviews.txt", sample_corpus_bytes)
    started = time.monotonic()
    train = alice_api.post("/api/v1/train", {"model_name": "nobody-here/some-model", "corpus_file": "reviews.txt",
                                             "layer_number": 0}, format="json")
    validate = alice_api.post("/api/v1/validate-model", {"model_name": "nobody-here/some-model"}, format="json")
    assert time.monotonic() - started < HUB_TIMEOUT_S / 2
    assert train.status_code == 400
    assert "Could not reach the Hugging Face hub" in train.json()["detail"]
    assert "HF_HUB_OFFLINE" in train.json()["detail"]
    assert validate.status_code == 200 and validate.json()["valid"] is False
    assert "HF_HUB_OFFLINE" in validate.json()["message"]
    assert not TrainingJob.objects.exists()


def closed_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens on it once the socket is closed


@pytest.mark.parametrize("hub_env,reason", [
    ({"HF_ENDPOINT": "http://nonexistent.invalid"}, "ConnectError"),  # the name does not resolve
    ({"HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}, "Connection refused"),
    ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
])
@pytest.mark.slow
def test_the_train_command_fails_at_once_when_the_hub_cannot_be_reached(tmp_path, hub_env, reason):
    env = {**os.environ, "MISTUDIO_DATA_DIR": str(tmp_path / "cli-data"), "MISTUDIO_MODELS_DIR": str(tmp_path / "cli-models"),
           "DATABASE_URL": own_sqlite_database(tmp_path), "MISTUDIO_HUB_TIMEOUT_S": str(HUB_TIMEOUT_S),
           **hub_env}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "manage.py", "train", "--model", "nobody-here/some-model", "--corpus",
                           str(SAMPLE_CORPUS), "--layer-number", "0"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=2 * HUB_TIMEOUT_S)
    assert time.monotonic() - started < HUB_TIMEOUT_S / 2
    assert done.returncode == 1
    assert "Could not reach the Hugging Face hub to fetch 'nobody-here/some-model'" in done.stderr
    assert reason in done.stderr and "Traceback" not in done.stderr
    # Asked once: huggingface_hub's back-off ("Retrying in 1s [Retry 1/5]") never started.
    assert "Retrying" not in done.stderr
