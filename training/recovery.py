"""The recovery checks that keep jobs moving when workers die: every worker process runs the first when it
starts, and every live worker runs both now and then (its watchdog, gpus.services); crash
recovery in docs/operations.md says what they guarantee. A run recovered here that was only paused cannot
write when it wakes (training.services, fencing); what it left is removed at the next worker start
(attempt_files_remove_stale)."""
import logging
import shutil
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from gpus.selectors import live_workers, worker_gone
from gpus.services import leases_release_stale
from training import services
from training.artifacts import layout
from training.models import Checkpoint, TrainingJob

logger = logging.getLogger("training")


def jobs_recover_stale() -> list[str]:
    """Find running jobs whose worker died — its pid is gone on this host, or its heartbeat is
    older than HEARTBEAT_STALE_S anywhere — and queue them again to resume from their last
    checkpoint, failing them after MAX_JOB_ATTEMPTS runs. Runs whenever a worker process starts."""
    now = timezone.now()
    recovered = []
    for job in TrainingJob.objects.filter(status=TrainingJob.Status.RUNNING):
        if not worker_gone(job.worker_host, job.worker_pid, job.heartbeat_at):
            continue
        # Conditional on the heartbeat we saw: if the worker beat in between, it is alive.
        still_lost = TrainingJob.objects.filter(pk=job.pk, status=TrainingJob.Status.RUNNING, heartbeat_at=job.heartbeat_at)
        lost = f"its worker (pid {job.worker_pid} on {job.worker_host}) stopped during run {job.attempts}"
        # The run ended when its worker last said it was alive.
        runs = services.job_runs_closed(job.runs, ended="worker lost", at=job.heartbeat_at or now)
        if job.cancel_requested_at:
            done = still_lost.update(status=TrainingJob.Status.CANCELLED, phase=TrainingJob.Phase.DONE,
                                     completed_at=now, updated_at=now, encrypted_hf_token="", runs=runs,
                                     message=f"Cancelled; {lost}")
        elif job.attempts >= settings.MAX_JOB_ATTEMPTS:
            reason = (f"{lost}, the last of {settings.MAX_JOB_ATTEMPTS} allowed runs "
                      "(MISTUDIO_MAX_JOB_ATTEMPTS). Check the worker's log and the kernel log for an "
                      "out-of-memory kill; a smaller batch_size or hidden_dim needs less memory.")
            done = still_lost.update(status=TrainingJob.Status.FAILED, phase=TrainingJob.Phase.DONE,
                                     completed_at=now, updated_at=now, encrypted_hf_token="", error=reason,
                                     runs=runs, message=f"Training failed: {reason}")
        else:
            done = still_lost.update(status=TrainingJob.Status.QUEUED, phase=TrainingJob.Phase.WAITING,
                                     updated_at=now, eta_s=None, runs=runs,
                                     message=f"Re-queued: {lost}; it resumes from its last checkpoint")
            if done:
                transaction.on_commit(lambda job_id=job.pk: services.job_enqueue(job_id))
        if done:
            logger.warning("Recovered job %s: %s", job.pk, lost)
            recovered.append(job.pk)
    return recovered


def jobs_requeue_orphans() -> list[str]:
    """Queued jobs whose task went missing: still queued QUEUE_STALE_S after their task was put on
    a queue while a live worker that could run them is idle (a worker buffers tasks while it
    trains and a killed one takes them along; Redis loses them, the ORM broker holds them for
    `retry`). Each gets a fresh task; a duplicate task is harmless, as a job is claimed once.
    Stale leases are released first: a slot leased to a job that ended or lost its worker is idle."""
    leases_release_stale()
    stale_before = timezone.now() - timedelta(seconds=settings.QUEUE_STALE_S)
    idle = list(live_workers().filter(job__isnull=True).values_list("gpu_index", flat=True))
    if not idle:
        return []
    requeued = []
    waiting = TrainingJob.objects.filter(status=TrainingJob.Status.QUEUED, enqueued_at__lt=stale_before)
    for job in waiting.order_by("created_at"):
        # A gpu_ids job waits in its first GPU's queue (gpus.selectors.queue_for).
        first_gpu = job.gpu_ids[0] if job.gpu_ids else job.gpu_id
        if first_gpu is not None:
            can_run = first_gpu in idle or None in idle
        else:
            can_run = True
        # Conditional on the timestamp we read: of two checks at once, one re-queues.
        if can_run and TrainingJob.objects.filter(pk=job.pk, status=TrainingJob.Status.QUEUED,
                                                  enqueued_at=job.enqueued_at).update(enqueued_at=timezone.now()):
            transaction.on_commit(lambda job_id=job.pk: services.job_enqueue(job_id))
            requeued.append(job.pk)
    if requeued:
        logger.warning("Re-queued jobs whose tasks were lost: %s", ", ".join(requeued))
    return requeued




def attempt_files_remove_stale() -> list[str]:
    """What runs that lost their job (a stale worker stopped, or killed before it cleaned up) left
    under their attempt's names: staging folders, and checkpoint files no Checkpoint row records
    (written, then found not to own the job). A run that still owns its job keeps everything; a
    recorded checkpoint stays, whichever run wrote it (a resumed run reads it). Runs whenever a
    worker process starts, after jobs_recover_stale."""
    folder = layout.models_dir()
    if not folder.is_dir():
        return []
    found = [(path, match) for path in folder.iterdir() if (match := layout.ATTEMPT_FILE.fullmatch(path.name))]
    owned = set(TrainingJob.objects.filter(pk__in={m["job"] for _, m in found}, status=TrainingJob.Status.RUNNING)
                .values_list("pk", "attempts"))
    recorded = set(Checkpoint.objects.filter(job_id__in={m["job"] for _, m in found}).values_list("path", flat=True))
    removed = []
    for path, match in found:
        if (match["job"], int(match["attempt"])) in owned or str(path) in recorded:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path.name)
    if removed:
        logger.warning("Removed what stale runs left: %s", ", ".join(sorted(removed)))
    return removed
