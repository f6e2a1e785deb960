"""Workers on many hosts: registration, being seen alive, the watchdog, and the GPU lease.

Every worker process registers its (host, device) row when it starts and marks it seen every
MISTUDIO_WORKER_SEEN_INTERVAL_S; a row's `job` is the lease of the job training on it: its own
worker's job, or a DDP job that a worker of another GPU runs across it. Which queue
a job goes to and which workers and leases are alive are reads: gpus.selectors.
"""
import logging
import os
import threading

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from gpus.models import Worker
from gpus.selectors import gpu_queue, lease_live, this_device, this_queue

logger = logging.getLogger("mistudio")


def worker_register() -> Worker:
    """This process's slot, created or taken over (a restarted worker gets its host/device row)."""
    now = timezone.now()
    name, memory = _gpu_identity()
    worker, _ = Worker.objects.update_or_create(
        host=settings.HOST_NAME, device=this_device(),
        defaults={"gpu_index": settings.WORKER_GPU, "queue": this_queue(), "pid": os.getpid(),
                  "gpu_name": name, "memory_total": memory, "fake": settings.FAKE_GPU and settings.WORKER_GPU is not None,
                  "started_at": now, "last_seen_at": now},
    )
    # A worker that comes back after a SIGKILL or a reboot finds the lease its dead run never
    # released: free it now, or the slot looks busy to the orphan check for good.
    if _lease_release_if_stale(worker):
        worker.refresh_from_db()
    return worker


def _gpu_identity():
    if settings.WORKER_GPU is None:
        return "", None
    if settings.FAKE_GPU:
        return "fake GPU (trains on the CPU)", None
    from engine.devices import gpu_inventory  # NVML: no CUDA context

    for gpu in gpu_inventory().gpus:
        if gpu.index == settings.WORKER_GPU:
            return gpu.name, gpu.memory_total
    return "", None


def worker_seen() -> None:
    Worker.objects.filter(host=settings.HOST_NAME, device=this_device()).update(
        last_seen_at=timezone.now(), pid=os.getpid())


class SeenThread(threading.Thread):
    """Marks this worker seen while it lives, idle or training, and runs the watchdog."""

    def __init__(self):
        super().__init__(name="worker-seen", daemon=True)

    def run(self):
        import time

        last_watch = time.monotonic()
        while True:
            time.sleep(settings.WORKER_SEEN_INTERVAL_S)
            try:
                worker_seen()
                if time.monotonic() - last_watch >= settings.WATCHDOG_INTERVAL_S:
                    last_watch = time.monotonic()
                    _watchdog()
            except Exception:  # noqa: BLE001 - a database hiccup must not kill the thread
                logger.exception("Could not record that worker %s/%s is alive", settings.HOST_NAME, this_device())
            finally:
                connection.close()


# What every live worker runs now and then, idle or not, in this order: dotted paths of
# functions, registered by the apps whose work they check (training: resume jobs whose worker
# died, free the slots they leased, queue again jobs whose task was lost). gpus knows no job.
_WATCHDOG_CHECKS: list[str] = []


def watchdog_register(dotted_path: str) -> None:
    if dotted_path not in _WATCHDOG_CHECKS:
        _WATCHDOG_CHECKS.append(dotted_path)


def _watchdog():
    from django.utils.module_loading import import_string

    for dotted_path in _WATCHDOG_CHECKS:
        import_string(dotted_path)()


def lease_devices(job) -> list[str]:
    """The slots of this host that `job`'s run leases, in one order for every caller (two jobs
    taking overlapping sets never wait on each other's rows): this worker's own, and the slot of
    every GPU the job names: each GPU of a gpu_ids job (its worker trains on them all with
    torchrun), and the GPU of a pinned job the default worker runs. So a GPU is leased to one job
    at a time, whichever worker's queue brought it."""
    gpus = job.gpu_ids or ([] if job.gpu_id is None else [job.gpu_id])
    return sorted({this_device(), *(f"gpu{index}" for index in gpus)})


def _slots_of(job) -> list[Worker]:
    devices = lease_devices(job)
    if this_device() in devices and not Worker.objects.filter(host=settings.HOST_NAME, device=this_device()).exists():
        worker_register()
    for device in devices:
        if device == this_device():
            continue
        # A GPU no worker of this host serves still gets a row, for its lease alone: a worker
        # started on that GPU later takes the row over (worker_register) and finds it leased.
        index = int(device.removeprefix("gpu"))
        Worker.objects.get_or_create(host=settings.HOST_NAME, device=device, defaults={
            "gpu_index": index, "queue": gpu_queue(index), "started_at": timezone.now(), "last_seen_at": None})
    return list(Worker.objects.filter(host=settings.HOST_NAME, device__in=devices).select_related("job").order_by("device"))


def lease_blocker(job) -> Worker | None:
    """The first slot `job` needs that a live lease of another job holds; None when all are free."""
    return next((slot for slot in _slots_of(job) if slot.job_id not in (None, job.pk) and lease_live(slot)), None)


def lease_acquire(job) -> bool:
    """Take every slot `job` needs (lease_devices), all or none: one transaction of compare-and-swaps,
    each on a slot's own `job` column, so of two workers racing for a slot exactly one wins and the
    loser keeps nothing. A slot whose lease is stale (lease_live) is free. False when a live lease
    of another job holds one of them, or when its owner already runs as many slots as
    MISTUDIO_MAX_RUNNING_JOBS_PER_USER allows (running_limit_reason)."""
    slots = _slots_of(job)
    if any(slot.job_id not in (None, job.pk) and lease_live(slot) for slot in slots):
        return False
    now = timezone.now()
    with transaction.atomic():
        # Under a lock on the owner's row, so two workers starting two of one user's jobs at once
        # count each other's lease (training.services locks the same row for the active-jobs quota).
        if running_limit_reason(job, len(slots), lock=True) is not None:
            return False
        # The caller claimed `job`: a lease on it elsewhere is its earlier run's, on slots it left
        # when its worker died.
        Worker.objects.filter(job=job).exclude(pk__in=[slot.pk for slot in slots]).update(job=None, leased_at=None)
        for slot in slots:
            own = {"last_seen_at": now, "pid": os.getpid()} if slot.device == this_device() else {}
            if not Worker.objects.filter(pk=slot.pk, job_id=slot.job_id).update(job=job, leased_at=now, **own):
                transaction.set_rollback(True)  # taken in between: none of them is ours
                return False
    return True


def running_limit_reason(job, slots: int | None = None, *, lock: bool = False) -> str | None:
    """Why `job` may not start now: its owner's other jobs already hold as many live slots (GPUs,
    or the CPU worker's) as MISTUDIO_MAX_RUNNING_JOBS_PER_USER allows, and `job` needs `slots` more
    (lease_devices; a sweep's members train in one slot). None when it may (staff, no owner, or the
    limit 0). Queued jobs are not counted: they wait, and this decides only who trains."""
    limit = settings.MAX_RUNNING_JOBS_PER_USER
    owner = job.owner
    if not limit or owner is None or owner.is_staff:
        return None
    if lock:
        type(owner).objects.select_for_update().filter(pk=owner.pk).exists()
    held = sum(1 for slot in Worker.objects.filter(job__owner=owner).exclude(job=job).select_related("job")
               if lease_live(slot))
    needed = slots if slots is not None else len(lease_devices(job))
    if held + needed <= limit:
        return None
    return (f"You already train on {held} slot(s) and may use at most {limit} at once "
            f"(MISTUDIO_MAX_RUNNING_JOBS_PER_USER): this job waits in the queue until one of yours ends")


def lease_wait(job, *, should_stop, on_busy=None) -> bool:
    """Take the slots `job` needs, waiting while another job trains on one of them: True once they
    are held, False when `should_stop()` (a cancel request) ends the wait first. `on_busy(slot)` is
    called once, when a slot is first found busy, with that slot. For a job its own process must
    run (the terminal's `manage.py train`); a worker hands a busy slot's job back to the queue instead."""
    import time

    # A short poll: an idle slot is taken within a second, and a cancel stops the wait as quickly.
    interval_s = min(settings.WORKER_SEEN_INTERVAL_S, 1.0)
    said_busy = False
    while not lease_acquire(job):
        if not said_busy and on_busy is not None:
            blocker = lease_blocker(job)
            if blocker is not None:
                on_busy(blocker)
                said_busy = True
        if should_stop():
            return False
        time.sleep(interval_s)
    return True


def _lease_release_if_stale(slot: Worker) -> bool:
    # Conditional on the lease we judged (job and when it was taken): a worker that took the slot
    # again in between, even for the same job, keeps it.
    if slot.job_id is None or lease_live(slot):
        return False
    return bool(Worker.objects.filter(pk=slot.pk, job_id=slot.job_id, leased_at=slot.leased_at).update(
        job=None, leased_at=None))


def leases_release_stale() -> list[str]:
    """Free every slot whose lease is stale (lease_live), on any host; the slots freed."""
    freed = [str(slot) for slot in Worker.objects.filter(job__isnull=False).select_related("job")
             if _lease_release_if_stale(slot)]
    if freed:
        logger.warning("Released the leases of slots whose job or worker is gone: %s", ", ".join(freed))
    return freed


def lease_hand_over(job, to_job) -> None:
    """Pass `job`'s slots to `to_job` of the same worker (a sweep's next member) without freeing them."""
    now = timezone.now()
    Worker.objects.filter(job=job).update(job=to_job, leased_at=now, last_seen_at=now)


def lease_release(job) -> None:
    """Free this host's slots leased to `job`'s run. A run whose job was taken over frees none that
    a later run of the job holds (its claim counted a newer attempt)."""
    Worker.objects.filter(job=job, host=settings.HOST_NAME).exclude(
        job__status=job.Status.RUNNING, job__attempts__gt=job.attempts).update(job=None, leased_at=None)
