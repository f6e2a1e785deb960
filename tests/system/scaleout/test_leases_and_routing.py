"""Worker slots, the GPU lease and queue routing, on the real database (whichever DATABASE_URL says)."""
from datetime import timedelta

import pytest
from django.utils import timezone

from gpus import services as workers
from gpus.models import Worker
from gpus.selectors import DEFAULT_QUEUE, gpu_queue, queue_for
from mistudio.errors import ServiceError
from tests.concurrency import at_once
from tests.model_fixtures import SAMPLE_CORPUS
from training import recovery, services
from training.models import TrainingJob

pytestmark = pytest.mark.django_db
# Workers racing for one slot, and how many times they race: a race that is lost only now and then
# still fails the test.
RACERS, ROUNDS = 6, 5


def slot(host, gpu, *, seen_s_ago=0, job=None):
    now = timezone.now()
    return Worker.objects.create(host=host, device=f"gpu{gpu}" if gpu is not None else "default", gpu_index=gpu,
                                 queue=gpu_queue(gpu) if gpu is not None else DEFAULT_QUEUE,
                                 started_at=now, last_seen_at=now - timedelta(seconds=seen_s_ago), job=job)


@pytest.fixture
def job_for(alice, hub_models):
    from corpora.services import corpus_add_from_path

    corpus_add_from_path(owner=alice, path=SAMPLE_CORPUS)

    def make(**fields):
        request = services.JobRequest(model_name="tiny/gpt2", corpus_file=SAMPLE_CORPUS.name, layer_number=1,
                                      hidden_dim=16, **fields)
        return services.job_create(owner=alice, request=request, enqueue=False)

    return make


@pytest.mark.slow
def test_one_slot_is_leased_to_one_running_job_at_a_time(settings, job_for):
    settings.HOST_NAME, settings.WORKER_GPU = "host-a", 0
    first, second = job_for(), job_for()
    for job in (first, second):  # both claimed by workers on this host (this process's pid: alive)
        services.job_claim(job.pk)
    first.refresh_from_db()
    assert workers.lease_acquire(first) is True
    assert Worker.objects.get(host="host-a", device="gpu0").job_id == first.pk
    assert workers.lease_acquire(second) is False  # the GPU is busy with a running job
    assert workers.lease_acquire(first) is True  # the holder may take it again
    workers.lease_release(first)
    assert workers.lease_acquire(second) is True
    # A holder that stopped running (its worker died, the sweep re-queued it) frees the slot.
    TrainingJob.objects.filter(pk=second.pk).update(status=TrainingJob.Status.QUEUED)
    assert workers.lease_acquire(first) is True


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_of_workers_racing_for_one_free_slot_exactly_one_takes_it(settings, alice):
    settings.HOST_NAME, settings.WORKER_GPU = "host-a", 0
    settings.MAX_RUNNING_JOBS_PER_USER = 0  # one owner's jobs: only the slot may decide who wins
    for _ in range(ROUNDS):
        jobs = [TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2") for _ in range(RACERS)]
        for job in jobs:  # each claimed by a worker on this host (this process's pid: alive)
            services.job_claim(job.pk)
        row = slot("host-a", 0)
        # Every worker reads the slot as free at once; the compare-and-swap lets one write land.
        won = at_once(RACERS, lambda i: workers.lease_acquire(jobs[i]))
        assert won.count(True) == 1, won
        row.refresh_from_db()
        assert row.job_id == jobs[won.index(True)].pk
        row.delete()
        TrainingJob.objects.filter(pk__in=[job.pk for job in jobs]).update(status=TrainingJob.Status.COMPLETED)


def test_jobs_go_to_a_queue_that_has_a_live_worker_for_them(job_for):
    plain, pinned = job_for(), job_for()
    assert queue_for(plain) == "mistudio"  # no GPU workers: the embedded default
    slot("host-a", 0)
    slot("host-b", 1)
    slot("host-c", 2, seen_s_ago=10_000)  # gone: never routed to
    assert queue_for(plain) in ("mistudio-gpu0", "mistudio-gpu1")
    TrainingJob.objects.filter(pk=pinned.pk).update(gpu_id=1)
    pinned.refresh_from_db()
    assert queue_for(pinned) == "mistudio-gpu1"
    TrainingJob.objects.filter(pk=pinned.pk).update(gpu_id=2)  # only a dead worker has GPU 2
    pinned.refresh_from_db()
    assert queue_for(pinned) == "mistudio"


def test_a_busy_gpu_sends_new_jobs_to_the_free_one(job_for):
    busy = job_for()
    services.job_claim(busy.pk)
    slot("host-a", 0, job=busy)
    slot("host-b", 1)
    assert queue_for(job_for()) == "mistudio-gpu1"


def test_a_gpu_id_that_only_a_registered_worker_has_is_accepted(job_for):
    with pytest.raises(Exception, match="gpu_id 3"):
        job_for(gpu_id=3)
    slot("gpu-host", 3)
    assert job_for(gpu_id=3).gpu_id == 3


def test_staff_see_every_hosts_workers_and_jobs_in_one_admin(client, charlie, job_for):
    slot("host-a", 0)
    slot("host-b", 0)
    job = job_for()
    TrainingJob.objects.filter(pk=job.pk).update(worker_host="host-b")
    client.force_login(charlie)
    workers_page = client.get("/admin/gpus/worker/").content.decode()
    assert "host-a" in workers_page and "host-b" in workers_page and "mistudio-gpu0" in workers_page
    jobs_page = client.get("/admin/training/trainingjob/?worker_host=host-b").content.decode()
    assert job.pk in jobs_page


def test_a_job_for_another_hosts_gpu_is_checked_against_that_gpus_memory(job_for):
    worker = slot("gpu-host", 2)
    Worker.objects.filter(pk=worker.pk).update(memory_total=80 * 1024**3, gpu_name="NVIDIA H100")
    job = job_for(gpu_id=2)
    assert job.memory_check == "passed"  # tiny/gpt2 fits in 80 GB; never an IndexError on this GPU-less host
    Worker.objects.filter(pk=worker.pk).update(memory_total=1024)
    with pytest.raises(ServiceError, match=r"This job needs about .* but GPU 2 of gpu-host has 0.0 GB in all"):
        job_for(gpu_id=2)


@pytest.mark.django_db(transaction=True)
def test_a_job_whose_task_was_lost_is_queued_again_once_a_worker_that_can_run_it_is_idle(job_for, settings):
    from tests.django_fixtures import queued_tasks

    settings.QUEUE_STALE_S = 60
    busy_0, busy_1 = job_for(), job_for()
    for busy, host in ((busy_0, "host-c"), (busy_1, "host-a")):
        services.job_claim(busy.pk)
        TrainingJob.objects.filter(pk=busy.pk).update(worker_host=host)  # claimed by that host's worker
    gpu_0 = slot("host-c", 0, job=busy_0)
    slot("host-a", 1, job=busy_1)  # both GPUs train: nothing idle yet
    lost, pinned, fresh = job_for(), job_for(gpu_id=0), job_for()
    long_ago = timezone.now() - timedelta(seconds=600)
    TrainingJob.objects.filter(pk__in=[lost.pk, pinned.pk]).update(enqueued_at=long_ago)
    TrainingJob.objects.filter(pk=fresh.pk).update(enqueued_at=timezone.now())
    assert recovery.jobs_requeue_orphans() == []

    slot("host-b", 1)  # an idle GPU-1 worker: the lost job may run there, the one pinned to GPU 0 may not
    assert recovery.jobs_requeue_orphans() == [lost.pk]
    tasks = queued_tasks()
    assert [t["args"] for t in tasks] == [(lost.pk,)] and tasks[0]["cluster"] == "mistudio-gpu1"
    assert recovery.jobs_requeue_orphans() == []  # not again until it has waited QUEUE_STALE_S more
    Worker.objects.filter(pk=gpu_0.pk).update(job=None)  # GPU 0 is free now
    assert recovery.jobs_requeue_orphans() == [pinned.pk]


def test_workers_show_a_held_jobs_id_only_to_who_may_see_the_job(job_for, alice_api, bob_api, charlie_api, client):
    job = job_for()
    services.job_claim(job.pk)
    slot("host-a", 0, job=job)
    held = lambda doc: next(w["job_id"] for w in doc["workers"] if w["host"] == "host-a")  # noqa: E731
    assert held(alice_api.get("/gpu/status").json()) == job.pk
    assert held(bob_api.get("/gpu/status").json()) == "another user's job"
    assert held(charlie_api.get("/health").json()) == job.pk  # staff see every job
    assert "workers" not in client.get("/health").json()  # anonymous callers get the seed's document only
