"""The Django tests' shared fixtures: a queue prefix per run, an empty queue and a data folder per
test (autouse), the personas (alice, bob, charlie) and their clients, uploads and the tiny models as
hub ids. Only the Django test folders' conftests import them (`from tests.django_fixtures import *`):
tests/engine runs with no Django at all."""
import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.model_fixtures import SAMPLE_CORPUS

__all__ = ["quick_password_hashing", "queue_apart", "empty_queue", "data_dir", "dead_pid", "alice", "bob", "bob_api",
           "charlie", "alice_api", "charlie_api", "alice_browser", "reviews_corpus", "sample_corpus_bytes", "upload", "corpus", "hub_models"]

# Each Django test folder's conftest imports the fixtures below, so a session-scoped one is set up once
# per folder the run visits: what they set is decided once here, so they all set the same.
_SESSION = {}


@pytest.fixture(scope="session", autouse=True)
def quick_password_hashing():
    """The personas are made for each test, and production's PBKDF2 (10^6 rounds) costs about half
    a second of CPU per password: the tests hash with MD5 first, as Django advises for test suites.
    The production hashers stay listed, so a hash a server made in a subprocess still verifies; no
    test is about the hash's cost."""
    from django.conf import settings

    hashers = _SESSION.setdefault("hashers", ["django.contrib.auth.hashers.MD5PasswordHasher", *settings.PASSWORD_HASHERS])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(settings, "PASSWORD_HASHERS", hashers)
        yield


@pytest.fixture(scope="session", autouse=True)
def queue_apart():
    """Test runs on one machine share one Redis: each run puts its queue keys under a prefix of its
    own (and the workers it starts inherit it), so no run takes another's tasks. The ORM broker needs
    nothing: its queues live in each run's test database."""
    from django.conf import settings

    prefix = _SESSION.setdefault("queue_prefix", f"{settings.QUEUE_PREFIX or 'mistudio'}-test-{os.getpid()}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(settings, "QUEUE_PREFIX", prefix)
        patch.setenv("MISTUDIO_QUEUE_PREFIX", prefix)
        yield prefix


@pytest.fixture(autouse=True)
def empty_queue(queue_apart):
    """Each test starts with an empty queue on Redis too, as the database's rollback gives it on the
    ORM broker: nothing a test enqueued is left for the next one (or in Redis after the run)."""
    from django.conf import settings

    yield
    if settings.REDIS_URL:
        import redis

        connection = redis.from_url(settings.REDIS_URL)
        for key in connection.scan_iter(match=f"{queue_apart}:*"):
            connection.delete(key)


REPO_ROOT = Path(__file__).resolve().parent.parent


def own_sqlite_database(folder: Path) -> str:
    """The DATABASE_URL of a migrated SQLite database of its own in `folder`, for a `manage.py`
    command the test runs as a subprocess. Each is a copy of one migrated once per test run:
    migrating in a new process costs seconds of start-up."""
    if "migrated" not in _SESSION:
        scratch = Path(tempfile.mkdtemp(prefix="mistudio-migrated-"))
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        env = {**os.environ, "DATABASE_URL": f"sqlite:///{scratch / 'db.sqlite3'}", "MISTUDIO_DATA_DIR": str(scratch / "data")}
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO_ROOT, env=env, check=True)
        _SESSION["migrated"] = scratch / "db.sqlite3"
    database = folder / "cli.sqlite3"
    shutil.copyfile(_SESSION["migrated"], database)
    return f"sqlite:///{database}"


def queued_tasks():
    """Every task waiting in the queue, decoded, on whichever broker holds it: the ORM broker's rows,
    or this run's lists in Redis."""
    from django.conf import settings
    from django_q.models import OrmQ
    from django_q.signing import SignedPackage

    if not settings.REDIS_URL:
        return [row.task for row in OrmQ.objects.order_by("id")]
    import redis

    connection = redis.from_url(settings.REDIS_URL)
    keys = sorted(connection.scan_iter(match=f"{settings.QUEUE_PREFIX}:django_q:*:q"))
    return [SignedPackage.loads(payload.decode()) for key in keys for payload in connection.lrange(key, 0, -1)]


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    """Each test writes corpora, activations and SAEs into its own folder."""
    settings.DATA_DIR = tmp_path / "data"
    settings.MODELS_DIR = tmp_path / "hub-models"
    # GGUF conversions are shared across tests (and runs): each is keyed by its file's identity.
    from tests.model_fixtures import TEST_MODELS_CACHE

    settings.MODELS_CACHE_DIR = TEST_MODELS_CACHE
    settings.DATA_DIR.mkdir()
    settings.MODELS_DIR.mkdir()
    # Short intervals so progress, checkpoints and cancellation show within a test's time.
    settings.PROGRESS_INTERVAL_S = 0.1
    settings.HUB_TIMEOUT_S = 3.0
    return settings.DATA_DIR


@pytest.fixture
def dead_pid():
    """A pid no process has any more (one that ran and exited): a worker that died."""
    import subprocess

    from mistudio.processes import pid_alive

    process = subprocess.Popen(["true"])
    process.wait()
    assert not pid_alive(process.pid)
    return process.pid


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
    from rest_framework.test import APIClient

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
def alice_browser(alice):
    """alice signed in to the pages, as a browser's session is (Django's test client)."""
    from django.test import Client

    client = Client()
    client.force_login(alice)
    return client


@pytest.fixture
def reviews_corpus(alice):
    """alice's sample corpus, stored as reviews.txt (the pages' forms offer it)."""
    from corpora.services import corpus_add

    return corpus_add(owner=alice, name="reviews.txt", chunks=[SAMPLE_CORPUS.read_bytes()])


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
def corpus(upload, sample_corpus_bytes):
    """alice's sample corpus, uploaded as reviews.txt: the name a request's corpus_file gives."""
    assert upload("reviews.txt", sample_corpus_bytes).status_code == 200
    return "reviews.txt"


@pytest.fixture
def hub_models(settings, tiny_gpt2_dir, tiny_llama_dir):
    """The tiny models placed under the models folder as if they were hub ids."""
    for hub_id, source in (("tiny/gpt2", tiny_gpt2_dir), ("tiny/llama", tiny_llama_dir)):
        shutil.copytree(source, settings.MODELS_DIR / hub_id)
    return settings.MODELS_DIR
