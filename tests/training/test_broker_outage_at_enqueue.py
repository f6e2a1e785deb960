"""The ORM broker's database failing as a job is queued: the request still answers as a success with
the one job it made (a 500 would make the client retry into a duplicate), the job waits queued and
says why, and the watchdog hands it to the queue once the broker answers again."""
import os
from datetime import timedelta

import pytest
from django.db import OperationalError
from django.utils import timezone
from django_q.brokers.orm import ORM

from gpus.models import Worker
from gpus.selectors import DEFAULT_QUEUE
from tests.django_fixtures import queued_tasks
from tests.model_fixtures import SAMPLE_CORPUS
from training import recovery, services
from training.models import Sweep, TrainingJob

pytestmark = [
    pytest.mark.django_db(transaction=True),
    # The scale-out run queues on Redis, which this file's ORM broker does not touch; a real stopped
    # Redis is tests/system/scaleout/test_redis_outage_at_enqueue.py.
    pytest.mark.skipif(bool(os.environ.get("REDIS_URL")), reason="the ORM broker's outage; runs in `make test`"),
]


@pytest.fixture
def corpus(upload):
    assert upload(SAMPLE_CORPUS.name, SAMPLE_CORPUS.read_bytes()).status_code == 200


@pytest.fixture
def broker_down(monkeypatch):
    """django-q2's ORM broker raising what its database raises when it cannot write (SQLite's
    "database is locked" past the busy timeout, a PostgreSQL connection gone)."""

    def enqueue(self, task):
        raise OperationalError("database is locked")

    monkeypatch.setattr(ORM, "enqueue", enqueue)
    return monkeypatch


def idle_worker():
    now = timezone.now()
    return Worker.objects.create(host="host-a", device="default", queue=DEFAULT_QUEUE, started_at=now, last_seen_at=now)


def watchdog_later(settings):
    """The watchdog's pass once QUEUE_STALE_S has gone by, with a worker idle."""
    idle_worker()
    TrainingJob.objects.update(enqueued_at=timezone.now() - timedelta(seconds=settings.QUEUE_STALE_S + 1))
    Sweep.objects.update(enqueued_at=timezone.now() - timedelta(seconds=settings.QUEUE_STALE_S + 1))
    return recovery.jobs_requeue_orphans()


def test_a_job_submitted_while_the_broker_is_down_is_made_once_and_queued_when_it_is_back(
        alice_api, hub_models, corpus, broker_down, settings):
    body = {"model_name": "tiny/gpt2", "corpus_file": SAMPLE_CORPUS.name, "layer_number": 1, "hidden_dim": 16}
    response = alice_api.post("/api/v1/train", body, format="json")
    assert response.status_code == 200, response.json()
    job = TrainingJob.objects.get()
    assert response.json()["job_id"] == job.id and job.status == TrainingJob.Status.QUEUED
    assert job.enqueued_at is not None and job.message == services.BROKER_DOWN_MESSAGE
    assert alice_api.get(f"/api/v1/train/{job.id}/status").json()["message"] == services.BROKER_DOWN_MESSAGE
    assert queued_tasks() == []

    broker_down.undo()  # the database answers again
    assert watchdog_later(settings) == [job.id]
    assert [(task["func"], task["args"]) for task in queued_tasks()] == [(services.TASK_PATH, (job.id,))]
    job.refresh_from_db()
    assert job.message == "Waiting for a worker" and TrainingJob.objects.count() == 1


def test_a_sweep_submitted_while_the_broker_is_down_is_made_once_and_queued_when_it_is_back(
        alice_api, hub_models, corpus, broker_down, settings):
    body = {"model_name": "tiny/gpt2", "corpus_file": SAMPLE_CORPUS.name, "layers": [0, 1], "hidden_dim": 16,
            "architecture": "topk", "k": 4}
    response = alice_api.post("/api/v1/sweeps", body, format="json")
    assert response.status_code == 201, response.json()
    sweep = Sweep.objects.get()
    assert sweep.jobs.filter(status=TrainingJob.Status.QUEUED, message=services.BROKER_DOWN_MESSAGE).count() == 2
    assert queued_tasks() == []

    broker_down.undo()
    assert watchdog_later(settings)  # a member, whose sweep's one task runs them all
    assert [(task["func"], task["args"]) for task in queued_tasks()] == [(services.SWEEP_TASK_PATH, (sweep.id,))]
    assert Sweep.objects.count() == 1 and TrainingJob.objects.count() == 2


def test_an_error_that_is_not_the_brokers_still_surfaces(alice, hub_models, corpus, monkeypatch):
    def enqueue(self, task):
        raise TypeError("a bug, not an outage")

    monkeypatch.setattr(ORM, "enqueue", enqueue)
    request = services.JobRequest(model_name="tiny/gpt2", corpus_file=SAMPLE_CORPUS.name, layer_number=1, hidden_dim=16)
    with pytest.raises(TypeError):
        services.job_create(owner=alice, request=request)
