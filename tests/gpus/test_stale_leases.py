"""A slot's lease outlives the run that took it only until a sweep or the slot's next worker sees
that its job or worker is gone: a SIGKILLed worker never releases its own."""
import os
from datetime import timedelta

import pytest
from django.utils import timezone

from gpus import services as workers
from gpus.models import Worker
from gpus.selectors import DEFAULT_QUEUE
from tests.django_fixtures import queued_tasks
from training import recovery, services
from training.models import TrainingJob

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def here(settings):
    settings.HOST_NAME, settings.WORKER_GPU = "host-a", None
    return "host-a"


def job(alice, **fields):
    values = dict(owner=alice, model_name="tiny/gpt2", status="running", attempts=1, worker_host="host-a",
                  worker_pid=os.getpid(), heartbeat_at=timezone.now())
    values.update(fields)
    return TrainingJob.objects.create(**values)


def slot(host="host-a", *, holder=None, device="default"):
    now = timezone.now()
    return Worker.objects.create(host=host, device=device, queue=DEFAULT_QUEUE, started_at=now,
                                 last_seen_at=now, job=holder, leased_at=now if holder else None)


def leased(row):
    row.refresh_from_db()
    return row.job_id


def test_a_lease_whose_job_has_ended_is_released(alice, here):
    for status in ("failed", "cancelled", "completed", "queued"):
        row = slot(holder=job(alice, status=status), device=f"for-{status}")
        assert workers.leases_release_stale() == [f"host-a/for-{status}"]
        assert leased(row) is None


def test_a_lease_whose_worker_pid_is_gone_on_this_host_is_released(alice, here, dead_pid):
    row = slot(holder=job(alice, worker_pid=dead_pid))
    assert workers.leases_release_stale() == ["host-a/default"]
    assert leased(row) is None


def test_a_lease_on_another_host_is_released_once_its_heartbeat_is_stale(alice, here, settings):
    holder = job(alice, worker_host="host-b", worker_pid=1)
    row = slot("host-b", holder=holder)
    assert workers.leases_release_stale() == []  # pid 1 means nothing here; its heartbeat is fresh
    TrainingJob.objects.filter(pk=holder.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.HEARTBEAT_STALE_S + 1))
    assert workers.leases_release_stale() == ["host-b/default"]
    assert leased(row) is None


def test_a_live_lease_is_kept(alice, here):
    holder = job(alice)
    row = slot(holder=holder)
    assert workers.leases_release_stale() == []
    assert leased(row) == holder.pk


def test_a_sweep_never_frees_a_lease_taken_again_in_between(alice, here):
    holder = job(alice, status="queued")
    row = slot(holder=holder)
    seen = Worker.objects.select_related("job").get(pk=row.pk)  # the sweep reads a stale lease...
    # ...then a worker claims the same job again and takes the slot for it.
    services.job_claim(holder.pk)
    assert workers.lease_acquire(TrainingJob.objects.get(pk=holder.pk))
    assert workers._lease_release_if_stale(seen) is False
    assert leased(row) == holder.pk


def test_a_worker_that_comes_back_frees_the_lease_its_killed_run_left(alice, here, dead_pid):
    failed = job(alice, status="failed", worker_pid=dead_pid)
    row = slot(holder=failed)
    registered = workers.worker_register()
    assert registered.pk == row.pk and registered.job_id is None
    # ...but a worker process starting beside a live run (MISTUDIO_WORKERS > 1) leaves its lease.
    running = job(alice)
    Worker.objects.filter(pk=row.pk).update(job=running, leased_at=timezone.now())
    assert workers.worker_register().job_id == running.pk


def test_the_lost_tasks_run_once_a_slot_leased_to_a_failed_job_is_freed(alice, here, settings):
    # A worker was SIGKILLed in its job's last allowed run: the sweep failed the job, the lease stayed.
    slot(holder=job(alice, status="failed"))
    settings.QUEUE_STALE_S = 60
    lost = TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2",
                                      enqueued_at=timezone.now() - timedelta(seconds=600))
    assert recovery.jobs_requeue_orphans() == [lost.pk]
    assert [task["args"] for task in queued_tasks()] == [(lost.pk,)]


def test_a_job_claimed_on_another_slot_takes_its_lease_along(alice, here, settings):
    # Its worker on GPU 0 died; the sweep re-queued it and GPU 1's worker of this host claims it.
    holder = job(alice, status="queued")
    gpu_0, gpu_1 = slot(holder=holder, device="gpu0"), slot(device="gpu1")
    services.job_claim(holder.pk)
    settings.WORKER_GPU = 1
    assert workers.lease_acquire(TrainingJob.objects.get(pk=holder.pk)) is True
    assert leased(gpu_0) is None and leased(gpu_1) == holder.pk
