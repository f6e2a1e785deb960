"""MISTUDIO_MAX_RUNNING_JOBS_PER_USER: one user's jobs train on at most that many slots at once;
the rest wait in the queue, saying why, and start once one of the user's runs ends. A DDP job holds
a slot per GPU; staff are exempt. On the real database, with the leases the workers take."""
from datetime import timedelta

import pytest
from django.utils import timezone

from gpus import services as workers
from gpus.models import Worker
from gpus.selectors import gpu_queue
from tests.model_fixtures import SAMPLE_CORPUS
from training import services
from training.worker import session as pipeline
from training.models import TrainingJob

pytestmark = pytest.mark.django_db(transaction=True)


def slot(gpu, *, host="host-a"):
    now = timezone.now()
    return Worker.objects.create(host=host, device=f"gpu{gpu}", gpu_index=gpu, queue=gpu_queue(gpu),
                                 started_at=now, last_seen_at=now)


@pytest.fixture
def host(settings):
    settings.HOST_NAME, settings.WORKER_GPU, settings.DDP_ON_CPU = "host-a", 0, True
    settings.MAX_RUNNING_JOBS_PER_USER = 2
    for gpu in range(4):
        slot(gpu)
    return settings


@pytest.fixture
def claimed(alice, hub_models):
    from corpora.services import corpus_add_from_path

    corpus_add_from_path(owner=alice, path=SAMPLE_CORPUS)

    def make(owner=alice, **fields):
        request = services.JobRequest(model_name="tiny/gpt2", corpus_file=SAMPLE_CORPUS.name, layer_number=1,
                                      hidden_dim=16, **fields)
        if owner != alice:
            corpus_add_from_path(owner=owner, path=SAMPLE_CORPUS)
        job = services.job_create(owner=owner, request=request, enqueue=False)
        return services.job_claim(job.pk)

    return make


def on_gpu(settings, gpu):
    settings.WORKER_GPU = gpu


def test_a_users_third_run_waits_while_two_train_and_starts_when_one_ends(host, claimed):
    first, second = claimed(), None
    assert workers.lease_acquire(first)
    on_gpu(host, 1)
    second = claimed()
    assert workers.lease_acquire(second)
    on_gpu(host, 2)
    third = claimed()
    assert workers.lease_acquire(third) is False
    assert Worker.objects.get(device="gpu2").job_id is None  # its free GPU stays free for others
    reason = pipeline.wait_reason(third)
    assert "MISTUDIO_MAX_RUNNING_JOBS_PER_USER" in reason and "2 slot(s)" in reason and "at most 2" in reason

    services.job_requeue(third, reason, enqueue=False)
    third.refresh_from_db()
    assert (third.status, third.message) == (TrainingJob.Status.QUEUED, reason)

    services.job_finish(first, status=TrainingJob.Status.COMPLETED, message="done")
    third = services.job_claim(third.pk)
    assert workers.lease_acquire(third) is True


def test_a_stale_lease_does_not_count(host, claimed):
    first = claimed()
    assert workers.lease_acquire(first)
    # Its worker went silent past the stale limit: the lease is no longer live.
    TrainingJob.objects.filter(pk=first.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=host.HEARTBEAT_STALE_S + 60), worker_host="host-z")
    on_gpu(host, 1)
    assert workers.lease_acquire(claimed())
    on_gpu(host, 2)
    assert workers.lease_acquire(claimed())


def test_a_ddp_job_counts_a_slot_per_gpu(host, claimed):
    ddp = claimed(gpu_ids=[0, 1])
    assert workers.lease_acquire(ddp)
    on_gpu(host, 2)
    single = claimed()
    assert workers.lease_acquire(single) is False
    assert "2 slot(s)" in pipeline.wait_reason(single)


def test_a_ddp_job_wider_than_the_limit_is_refused_when_made(host, alice_api, claimed):
    """It would never start: a 400 naming the limit, at the API."""
    host.MAX_RUNNING_JOBS_PER_USER = 1
    response = alice_api.post("/api/v1/train", {"model_name": "tiny/gpt2", "corpus_file": SAMPLE_CORPUS.name,
                                                "layer_number": 1, "hidden_dim": 16, "gpu_ids": [0, 1]},
                              format="json")
    assert response.status_code == 400, response.content
    assert "MISTUDIO_MAX_RUNNING_JOBS_PER_USER" in response.json()["detail"]
    assert not TrainingJob.objects.exists()


@pytest.mark.slow
def test_other_users_staff_and_no_limit_are_not_held(host, claimed, bob, charlie):
    host.MAX_RUNNING_JOBS_PER_USER = 1
    assert workers.lease_acquire(claimed())
    on_gpu(host, 1)
    assert workers.lease_acquire(claimed(owner=bob))  # bob's own first run
    on_gpu(host, 2)
    assert workers.lease_acquire(claimed(owner=charlie))  # staff
    on_gpu(host, 3)
    held = claimed()
    assert workers.lease_acquire(held) is False
    host.MAX_RUNNING_JOBS_PER_USER = 0
    assert workers.lease_acquire(held) is True
