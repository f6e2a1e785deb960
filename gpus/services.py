"""Workers on many hosts: registration, being seen alive, the watchdog, and the GPU lease.

Every worker process registers its (host, device) row when it starts and marks it seen every
MISTUDIO_WORKER_SEEN_INTERVAL_S; the row's `job` is the lease it holds while training. Which queue
a job goes to and which workers and leases are alive are reads: gpus.selectors.
"""
import logging
import os
import threading

from django.conf import settings
from django.db import connection
from django.utils import timezone

from gpus.models import Worker
from gpus.selectors import lease_live, this_device, this_queue

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


def lease_acquire(job) -> bool:
    """Take this worker's slot for `job`: a compare-and-swap on the slot's own `job` column, so of
    two workers racing for one slot exactly one wins. A slot whose lease is stale (lease_live) is
    free. False when a live lease of another job holds it."""
    slot = Worker.objects.filter(host=settings.HOST_NAME, device=this_device()).select_related("job").first()
    if slot is None:
        slot = worker_register()
    if slot.job_id is not None and slot.job_id != job.pk and lease_live(slot):
        return False
    now = timezone.now()
    # The caller claimed `job`: a lease on it elsewhere is its earlier run's, on a slot it left
    # when its worker died (a job holds one slot at most).
    Worker.objects.filter(job=job).exclude(pk=slot.pk).update(job=None, leased_at=None)
    return bool(Worker.objects.filter(pk=slot.pk, job_id=slot.job_id).update(
        job=job, leased_at=now, last_seen_at=now, pid=os.getpid()))


def lease_wait(job, *, should_stop, on_busy=None) -> bool:
    """Take this worker's slot for `job`, waiting while another job trains on it: True once it is
    held, False when `should_stop()` (a cancel request) ends the wait first. `on_busy(holder_id)` is
    called once, when the slot is first found busy. For a job its own process must run (the
    terminal's `manage.py train`); a worker hands a busy slot's job back to the queue instead."""
    import time

    # A short poll: an idle slot is taken within a second, and a cancel stops the wait as quickly.
    interval_s = min(settings.WORKER_SEEN_INTERVAL_S, 1.0)
    said_busy = False
    while not lease_acquire(job):
        if not said_busy and on_busy is not None:
            on_busy(Worker.objects.filter(host=settings.HOST_NAME, device=this_device()).values_list(
                "job_id", flat=True).first())
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
    """Pass `job`'s slot to `to_job` of the same worker (a sweep's next member) without freeing it."""
    now = timezone.now()
    Worker.objects.filter(job=job).update(job=to_job, leased_at=now, last_seen_at=now)


def lease_release(job) -> None:
    Worker.objects.filter(job=job).update(job=None, leased_at=None)
