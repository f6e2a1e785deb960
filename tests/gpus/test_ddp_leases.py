"""A gpu_ids (DDP) job in a deployment of `gpu_worker --gpu N` hosts: it waits in its first GPU's
queue, and its run leases every GPU it trains on, all or none, so no single-GPU job shares one of
them; its leases are freed like a single job's after a crash. On the real database."""
from datetime import timedelta

import pytest
from django.utils import timezone

from gpus import services as workers
from gpus.models import Worker
from gpus.selectors import DEFAULT_QUEUE, gpu_index_served, gpu_queue, live_workers, queue_for, workers_document
from tests.django_fixtures import queued_tasks
from tests.model_fixtures import SAMPLE_CORPUS
from training import recovery, services
from training.models import TrainingJob

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def host_a(settings):
    settings.HOST_NAME, settings.WORKER_GPU = "host-a", 0
    return settings


def slot(gpu, *, host="host-a", seen_s_ago=0):
    now = timezone.now()
    return Worker.objects.create(host=host, device=f"gpu{gpu}", gpu_index=gpu, queue=gpu_queue(gpu),
                                 started_at=now, last_seen_at=now - timedelta(seconds=seen_s_ago))


@pytest.fixture
def job_for(alice, hub_models, settings):
    from corpora.services import corpus_add_from_path

    settings.DDP_ON_CPU = True  # gpu_ids are accepted on this GPU-less machine
    corpus_add_from_path(owner=alice, path=SAMPLE_CORPUS)

    def make(*, claimed=True, **fields):
        request = services.JobRequest(model_name="tiny/gpt2", corpus_file=SAMPLE_CORPUS.name, layer_number=1,
                                      hidden_dim=16, **fields)
        job = services.job_create(owner=alice, request=request, enqueue=False)
        # Claimed by a worker of this host (this process's pid: alive).
        return services.job_claim(job.pk) if claimed else job

    return make


def leased(*gpus, host="host-a"):
    return [Worker.objects.get(host=host, device=f"gpu{gpu}").job_id for gpu in gpus]


def as_worker_of(settings, gpu):
    settings.WORKER_GPU = gpu


def test_a_gpu_ids_job_waits_in_the_queue_of_its_first_gpu(job_for):
    ddp = job_for(claimed=False, gpu_ids=[1, 0])
    assert queue_for(ddp) == DEFAULT_QUEUE  # no GPU workers: the one-host default worker runs it
    slot(0)
    assert queue_for(ddp) == DEFAULT_QUEUE  # no live worker serves GPU 1: nothing would take it there
    slot(1, seen_s_ago=10_000)
    assert queue_for(ddp) == DEFAULT_QUEUE  # GPU 1's worker is gone
    slot(1, host="host-b")
    assert queue_for(ddp) == gpu_queue(1)


def test_a_gpu_ids_job_leases_every_gpu_it_trains_on(job_for, host_a, settings):
    slot(0), slot(1), slot(2)
    ddp = job_for(gpu_ids=[0, 1])
    assert workers.lease_acquire(ddp) is True
    assert leased(0, 1, 2) == [ddp.pk, ddp.pk, None]

    # GPU 1's worker claims a single-GPU job: it must wait for the DDP job, not share GPU 1.
    as_worker_of(settings, 1)
    single = job_for()
    assert workers.lease_acquire(single) is False
    assert workers.lease_blocker(single) == Worker.objects.get(host="host-a", device="gpu1")
    assert leased(0, 1) == [ddp.pk, ddp.pk]
    # ...and so must a job pinned to GPU 1 that the host's default worker would run.
    settings.WORKER_GPU = None
    pinned = job_for(gpu_id=1)
    assert workers.lease_acquire(pinned) is False
    assert Worker.objects.get(host="host-a", device="default").job_id is None

    workers.lease_release(ddp)
    assert leased(0, 1) == [None, None]
    as_worker_of(settings, 1)
    assert workers.lease_acquire(single) is True
    assert leased(0, 1) == [None, single.pk]


def test_a_gpu_ids_job_takes_no_gpu_while_one_of_them_is_busy(job_for, host_a, settings):
    slot(0), slot(1)
    as_worker_of(settings, 1)
    single = job_for()
    assert workers.lease_acquire(single) is True
    as_worker_of(settings, 0)
    ddp = job_for(gpu_ids=[0, 1])
    assert workers.lease_acquire(ddp) is False
    assert leased(0, 1) == [None, single.pk]  # GPU 0 stays free for other jobs meanwhile
    workers.lease_release(single)
    assert workers.lease_acquire(ddp) is True
    assert leased(0, 1) == [ddp.pk, ddp.pk]


def test_a_gpu_taken_in_between_rolls_back_the_gpus_already_taken(job_for, host_a, settings, monkeypatch):
    slot(0), slot(1)
    ddp = job_for(gpu_ids=[0, 1])
    seen = workers._slots_of(ddp)  # the DDP worker reads both GPUs as free...
    as_worker_of(settings, 1)
    single = job_for()
    assert workers.lease_acquire(single) is True  # ...then GPU 1's worker takes GPU 1
    as_worker_of(settings, 0)
    monkeypatch.setattr(workers, "_slots_of", lambda job: seen)
    assert workers.lease_acquire(ddp) is False
    assert leased(0, 1) == [None, single.pk]  # GPU 0's compare-and-swap went through, and was undone


def test_a_gpu_no_worker_serves_is_leased_by_a_row_of_its_own(job_for, host_a, settings, alice):
    slot(0)
    ddp = job_for(gpu_ids=[0, 1])
    assert workers.lease_acquire(ddp) is True
    gpu_1 = Worker.objects.get(host="host-a", device="gpu1")
    assert (gpu_1.job_id, gpu_1.queue, gpu_1.last_seen_at, gpu_1.pid) == (ddp.pk, "mistudio-gpu1", None, None)
    # A row only for the lease: no job is routed to it, and it is shown as no worker.
    assert not live_workers().filter(gpu_index=1).exists()
    assert not gpu_index_served(1)
    assert {w["device"]: w["alive"] for w in workers_document(alice)} == {"gpu0": True, "gpu1": False}

    # A worker started on GPU 1 meanwhile takes the row over, finds it leased, and waits.
    as_worker_of(settings, 1)
    assert workers.worker_register().job_id == ddp.pk
    assert workers.lease_acquire(job_for()) is False
    assert leased(0, 1) == [ddp.pk, ddp.pk]


def test_a_crashed_gpu_ids_runs_leases_are_all_released(job_for, host_a, dead_pid):
    slot(0), slot(1)
    ddp = job_for(gpu_ids=[0, 1])
    assert workers.lease_acquire(ddp) is True
    TrainingJob.objects.filter(pk=ddp.pk).update(worker_pid=dead_pid)  # its worker was SIGKILLed
    assert sorted(workers.leases_release_stale()) == ["host-a/gpu0", "host-a/gpu1"]
    assert leased(0, 1) == [None, None]


def test_a_gpu_ids_job_claimed_again_on_another_host_takes_its_leases_along(job_for, host_a, settings):
    slot(0), slot(1), slot(0, host="host-b"), slot(1, host="host-b")
    ddp = job_for(gpu_ids=[0, 1])
    assert workers.lease_acquire(ddp) is True
    # Its worker on host-a died; recovered, the job is claimed by host-b's GPU-0 worker.
    TrainingJob.objects.filter(pk=ddp.pk).update(status=TrainingJob.Status.QUEUED)
    settings.HOST_NAME = "host-b"
    ddp = services.job_claim(ddp.pk)
    assert workers.lease_acquire(ddp) is True
    assert leased(0, 1) == [None, None]
    assert leased(0, 1, host="host-b") == [ddp.pk, ddp.pk]


def test_a_recovered_gpu_ids_job_goes_back_to_its_first_gpus_queue(job_for, host_a, settings, dead_pid):
    slot(0), slot(1)
    ddp = job_for(gpu_ids=[0, 1])
    TrainingJob.objects.filter(pk=ddp.pk).update(worker_pid=dead_pid)
    assert recovery.jobs_recover_stale() == [ddp.pk]
    assert [(t["args"], t["cluster"]) for t in queued_tasks()] == [((ddp.pk,), "mistudio-gpu0")]


def test_a_gpu_ids_job_whose_task_was_lost_is_queued_again_on_its_first_gpu(job_for, host_a, settings):
    settings.QUEUE_STALE_S = 60
    gpu_0 = slot(0)
    slot(1)
    busy = job_for()
    Worker.objects.filter(pk=gpu_0.pk).update(job=busy, leased_at=timezone.now())  # GPU 0 trains
    ddp = job_for(claimed=False, gpu_ids=[0, 1])
    TrainingJob.objects.filter(pk=ddp.pk).update(enqueued_at=timezone.now() - timedelta(seconds=600))
    assert recovery.jobs_requeue_orphans() == []  # only GPU 1 is idle: GPU 0's worker would take it
    Worker.objects.filter(pk=gpu_0.pk).update(job=None, leased_at=None)
    assert recovery.jobs_requeue_orphans() == [ddp.pk]
    assert [(t["args"], t["cluster"]) for t in queued_tasks()] == [((ddp.pk,), "mistudio-gpu0")]


@pytest.mark.slow
def test_a_worker_hands_back_a_job_whose_gpu_a_ddp_job_holds(job_for, host_a, settings):
    from training.worker.job import job_run

    settings.WORKER_SEEN_INTERVAL_S = 0.01
    slot(0), slot(1)
    ddp = job_for(gpu_ids=[0, 1])
    assert workers.lease_acquire(ddp) is True
    as_worker_of(settings, 1)
    waiting = job_for(claimed=False)
    ran = job_run(waiting.pk)
    assert ran.status == TrainingJob.Status.QUEUED and ran.attempts == 0
    # It names the GPU it waits for, not the job that holds it (maybe another user's).
    assert ran.message == "GPU slot host-a/gpu1 was busy; waiting for a free worker"
    assert leased(0, 1) == [ddp.pk, ddp.pk]


def test_a_gpu_worker_fails_a_gpu_ids_job_for_a_gpu_its_host_lacks(job_for, host_a, settings, monkeypatch):
    from engine import devices
    from engine.errors import DeviceError
    from training.worker.device import job_device

    settings.FAKE_GPU = False
    gpu = devices.GpuInfo(index=0, name="GPU", memory_total=1, memory_used=0, memory_free=1, utilization=0.0)
    monkeypatch.setattr(devices, "gpu_inventory", lambda: devices.GpuInventory(driver_available=True, gpus=[gpu]))
    with pytest.raises(DeviceError, match=r"host host-a has no GPU 1 \(NVML sees \[0\]\)"):
        job_device(job_for(gpu_ids=[0, 1]), lambda index: f"cuda:{index}")
    assert job_device(job_for(), lambda index: f"cuda:{index}") == "cuda:0"
