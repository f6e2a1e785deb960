"""Reads of the worker registry: which queue a job goes to, which workers and leases are alive,
and the document /health, /gpu/status and the GPU page show. The writes (registering, marking
seen, taking and freeing leases) are gpus.services.

A GPU worker is one `qcluster` started by `manage.py gpu_worker --gpu N`: it sees only GPU N
(CUDA_VISIBLE_DEVICES) and takes jobs from the queue `mistudio-gpuN`, which every host's GPU-N
worker shares; a multi-GPU `gpu_ids` job waits in the queue of its first GPU. A host's plain
`manage.py qcluster` serves the default queue `mistudio` (the CPU, or whichever of its GPUs has
the most free memory; also the jobs for GPUs no live GPU worker serves).
"""
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from gpus.models import Worker
from mistudio.processes import pid_alive

DEFAULT_QUEUE = "mistudio"


def gpu_queue(index: int) -> str:
    return f"{DEFAULT_QUEUE}-gpu{index}"


def this_device() -> str:
    return "default" if settings.WORKER_GPU is None else f"gpu{settings.WORKER_GPU}"


def this_queue() -> str:
    return DEFAULT_QUEUE if settings.WORKER_GPU is None else gpu_queue(settings.WORKER_GPU)


def live_workers():
    return Worker.objects.filter(last_seen_at__gte=timezone.now() - timedelta(seconds=settings.HEARTBEAT_STALE_S))


def worker_gone(host: str, pid, heartbeat_at) -> bool:
    """Whether the process that claimed a job is gone: its pid no longer exists on this host, or
    it has not written a heartbeat for HEARTBEAT_STALE_S (on any host). The crash-recovery check
    and the lease check judge by this one rule."""
    if host == settings.HOST_NAME and not pid_alive(pid):
        return True
    return heartbeat_at is None or heartbeat_at < timezone.now() - timedelta(seconds=settings.HEARTBEAT_STALE_S)


def lease_live(slot: Worker) -> bool:
    """Whether a slot's lease is held: its job is running, claimed on the slot's host, by a worker
    that is not gone. A lease is stale once its job ended, went back to the queue, or lost its
    worker (SIGKILL, OOM kill, reboot), because only a finishing run releases its own."""
    holder = slot.job
    return (holder is not None and holder.is_running and holder.worker_host == slot.host
            and not worker_gone(holder.worker_host, holder.worker_pid, holder.heartbeat_at))


def queue_for(job) -> str:
    """Where a job waits. A job for GPU N goes to the GPU-N queue when a live worker serves it; a
    gpu_ids job goes, likewise, to the queue of its first GPU, whose worker runs torchrun across
    every listed GPU of its host (leasing each: gpus.services.lease_acquire); a job with no GPU
    asked goes to the GPU queue with the least work, free slots first, when GPU workers are live;
    everything else (one host, the CPU) to the default queue."""
    gpu_workers = live_workers().filter(gpu_index__isnull=False)
    first_gpu = job.gpu_ids[0] if getattr(job, "gpu_ids", None) else job.gpu_id
    if first_gpu is not None:
        return gpu_queue(first_gpu) if gpu_workers.filter(gpu_index=first_gpu).exists() else DEFAULT_QUEUE
    if not gpu_workers.exists():
        return DEFAULT_QUEUE
    slots = {}
    for worker in gpu_workers:
        free = worker.job_id is None or worker.job is None or not worker.job.is_running
        total, idle = slots.get(worker.gpu_index, (0, 0))
        slots[worker.gpu_index] = (total + 1, idle + int(free))
    from django_q.brokers import get_broker

    # Tasks waiting in each GPU queue, from the broker itself (ORM or Redis alike).
    waiting = {index: get_broker(gpu_queue(index)).queue_size() or 0 for index in slots}

    def load(index):
        total, idle = slots[index]
        # Work per slot: what waits, minus what free slots will take at once.
        return ((waiting[index] - idle) / total, index)

    return gpu_queue(min(slots, key=load))


def gpu_index_served(index: int) -> bool:
    return live_workers().filter(gpu_index=index).exists()


def workers_document(user=None) -> list[dict]:
    """Every registered worker, for /health, /gpu/status and the GPU page. `job_visible` says
    whether `user` (None: an anonymous caller) may see the job a worker holds."""
    signed_in = user is not None and user.is_authenticated
    stale_before = timezone.now() - timedelta(seconds=settings.HEARTBEAT_STALE_S)
    return [
        {
            "host": w.host,
            "device": w.device,
            "gpu_index": w.gpu_index,
            "gpu_name": w.gpu_name or None,
            "queue": w.queue,
            "pid": w.pid,
            "fake": w.fake,
            "last_seen_at": w.last_seen_at,
            "alive": w.last_seen_at is not None and w.last_seen_at >= stale_before,
            "job_id": w.job_id,
            "job_visible": bool(w.job_id and signed_in and w.job.visible_to(user)),
        }
        for w in Worker.objects.select_related("job").all()
    ]
