import shutil
from pathlib import Path

import pytest
from rest_framework.test import APIClient

pytest_plugins = ["tests.model_fixtures"]

SAMPLE_CORPUS = Path(__file__).resolve().parent.parent / "samples" / "demo_corpus.txt"


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    """Each test writes corpora, activations and SAEs into its own folder."""
    settings.DATA_DIR = tmp_path / "data"
    settings.MODELS_DIR = tmp_path / "hub-models"
    settings.DATA_DIR.mkdir()
    settings.MODELS_DIR.mkdir()
    # Short intervals so progress, checkpoints and cancellation show within a test's time.
    settings.PROGRESS_INTERVAL_S = 0.1
    settings.HUB_TIMEOUT_S = 3.0
    return settings.DATA_DIR


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="alice-password-1")


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user("bob", password="bob-password-1")


@pytest.fixture
def bob_api(bob):
    return _client_for(bob)


@pytest.fixture
def charlie(django_user_model):
    return django_user_model.objects.create_superuser("charlie", password="charlie-password-1")


def _client_for(user):
    from knox.models import AuthToken

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {AuthToken.objects.create(user=user)[1]}")
    return client


@pytest.fixture
def alice_api(alice):
    return _client_for(alice)


@pytest.fixture
def charlie_api(charlie):
    return _client_for(charlie)


@pytest.fixture
def sample_corpus_bytes():
    return SAMPLE_CORPUS.read_bytes()


@pytest.fixture
def upload(alice_api):
    """Upload bytes as a corpus through the real endpoint."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    def do(name, content, client=None):
        return (client or alice_api).post(
            "/api/v1/upload", {"file": SimpleUploadedFile(name, content)}, format="multipart"
        )

    return do


@pytest.fixture
def hub_models(settings, tiny_gpt2_dir, tiny_llama_dir):
    """The tiny models placed under the models folder as if they were hub ids."""
    for hub_id, source in (("tiny/gpt2", tiny_gpt2_dir), ("tiny/llama", tiny_llama_dir)):
        shutil.copytree(source, settings.MODELS_DIR / hub_id)
    return settings.MODELS_DIR
