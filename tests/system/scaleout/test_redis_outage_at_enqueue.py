"""A real Redis broker stopped while a job is submitted: the request answers at once with the one job
it made (never a 500, which a client would retry into a duplicate), and once Redis is back the
watchdog puts the job's task in it. The Redis is this test's own redis-server on a free port, so it
runs whichever broker the suite uses."""
import shutil
import socket
import subprocess
import time
from datetime import timedelta

import pytest
import redis
from django.utils import timezone
from django_q.conf import Conf
from django_q.signing import SignedPackage

from gpus.models import Worker
from gpus.selectors import DEFAULT_QUEUE
from tests.model_fixtures import SAMPLE_CORPUS
from training import recovery, services
from training.models import TrainingJob

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServer:
    def __init__(self, port, folder):
        self.port, self.folder, self.process = port, folder, None

    def start(self):
        self.process = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                         "--save", "", "--appendonly", "no", "--dir", str(self.folder)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=15)


@pytest.fixture
def own_redis(tmp_path, monkeypatch):
    """django-q2 pointed at a redis-server of this test's own (PrefixedRedis, as REDIS_URL sets)."""
    server = RedisServer(free_port(), tmp_path)
    server.start()
    monkeypatch.setattr(Conf, "BROKER_CLASS", "mistudio.broker.PrefixedRedis")
    monkeypatch.setattr(Conf, "REDIS", f"redis://127.0.0.1:{server.port}/0")
    yield server
    if server.process.poll() is None:
        server.stop()


def tasks_in(server, queue_prefix):
    connection = redis.Redis(port=server.port)
    return [SignedPackage.loads(payload.decode()) for key in connection.scan_iter(match=f"{queue_prefix}:django_q:*:q")
            for payload in connection.lrange(key, 0, -1)]


@pytest.mark.slow
def test_a_job_submitted_while_redis_is_stopped_is_made_once_and_queued_when_it_is_back(
        alice_api, upload, hub_models, own_redis, queue_apart, settings):
    assert upload(SAMPLE_CORPUS.name, SAMPLE_CORPUS.read_bytes()).status_code == 200
    own_redis.stop()  # nothing listens on its port now: a real outage
    body = {"model_name": "tiny/gpt2", "corpus_file": SAMPLE_CORPUS.name, "layer_number": 1, "hidden_dim": 16}
    started = time.monotonic()
    response = alice_api.post("/api/v1/train", body, format="json")
    assert response.status_code == 200, response.json()
    assert time.monotonic() - started < 30
    job = TrainingJob.objects.get()
    assert response.json()["job_id"] == job.id and job.status == TrainingJob.Status.QUEUED
    assert job.message == services.BROKER_DOWN_MESSAGE

    own_redis.start()
    assert tasks_in(own_redis, queue_apart) == []
    now = timezone.now()
    Worker.objects.create(host="host-a", device="default", queue=DEFAULT_QUEUE, started_at=now, last_seen_at=now)
    TrainingJob.objects.update(enqueued_at=now - timedelta(seconds=settings.QUEUE_STALE_S + 1))
    assert recovery.jobs_requeue_orphans() == [job.id]
    assert [(task["func"], task["args"]) for task in tasks_in(own_redis, queue_apart)] == [(services.TASK_PATH, (job.id,))]
    assert TrainingJob.objects.count() == 1
