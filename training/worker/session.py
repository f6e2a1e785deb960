"""What every run does around its work, a single job's (training.worker.job) and a sweep's
(training.worker.sweep) alike: the GPU slot's lease (or the jobs back to the queue, saying why),
one heartbeat for all the run's jobs, a cancel check per job, each job's ending on its row
(job_finish_outcome, job_fail_with: an out-of-memory failure explained) and, whatever the ending,
the lease released, the staging folders removed and the tokens wiped (release).

A run writes to its jobs only while it owns them (training.services: the attempt it claimed is
its fencing token). When the heartbeat finds a job taken over, that job's cancel check raises
JobLost, and the run writes nothing more for it."""
import logging
import math
import threading
import time
from pathlib import Path

from django.conf import settings

from engine.errors import EngineError
from mistudio.errors import ServiceError
from training import selectors, services
from training.models import TrainingJob
from training.services import JobLost
from training.worker.reporting import Throttle
from training.worker.spec import job_hub_token, job_model, job_staged_moves

logger = logging.getLogger("training")


def wait_reason(job) -> str:
    """Why `job` went back to the queue: its owner's running limit, or the slot it waits for (the
    first busy one of those it leases, or this worker's own when it was freed in between). Not who
    holds it: the message is the job's owner's to read, and the holder may be another user's job
    (the workers' documents hide those)."""
    from gpus.selectors import this_device
    from gpus.services import lease_blocker, running_limit_reason

    if (limited := running_limit_reason(job)) is not None:
        return limited
    blocker = lease_blocker(job)
    slot = str(blocker) if blocker is not None else f"{settings.HOST_NAME}/{this_device()}"
    return f"GPU slot {slot} was busy; waiting for a free worker"


class Heartbeat(threading.Thread):
    """Tells the database this worker is alive, independently of progress: loading a large model
    or one long epoch must not look like a dead worker. One thread for every job the worker runs
    (a sweep's members); `lost` holds those recovered elsewhere meanwhile."""

    def __init__(self, *jobs):
        super().__init__(name=f"heartbeat-{jobs[0].pk}", daemon=True)
        self.jobs = list(jobs)
        self.stopped = threading.Event()
        self.lost: set[str] = set()

    def run(self):
        from django.db import connection

        try:
            while not self.stopped.wait(settings.HEARTBEAT_INTERVAL_S):
                for job in self.jobs:
                    if job.pk not in self.lost and not services.job_heartbeat(job):
                        self.lost.add(job.pk)
        finally:
            connection.close()

    def stop(self):
        self.stopped.set()
        self.join(timeout=10)


def cancel_check(job_id, heartbeat):
    throttle = Throttle(0.5)
    state = {"stop": False}

    def should_stop():
        if job_id in heartbeat.lost:
            raise JobLost(f"job {job_id}: its heartbeat found it taken over")
        if not state["stop"] and throttle():
            state["stop"] = selectors.job_cancel_requested(job_id)
        return state["stop"]

    return should_stop


def release(job) -> None:
    """What a run holds, released whatever its ending: its slots' lease and its staging folder
    (moved into place by its ending, or a stale or failed run's leftovers). The token is gone too
    (job_finish wipes it; this covers a crash in it), unless the job went back to the queue to
    resume and still needs it, or another run took it over (a newer attempt: its token, not ours)."""
    from gpus.services import lease_release

    lease_release(job)
    services.job_staging_remove(job)
    TrainingJob.objects.filter(pk=job.pk, attempts=job.attempts).exclude(status=TrainingJob.Status.QUEUED).exclude(
        encrypted_hf_token="").update(encrypted_hf_token="")


class RunSession:
    """The claimed `jobs` of one run (a job, or a sweep's members; the first holds the slot).

    Entered, it leases the slot: when another live job holds it and the run may not wait
    (`wait_for_slot` false: a worker), the jobs go back to the queue saying why (`enqueue`: how
    they are put on the queue again; None: each job's own task) and `requeued` is true: the run
    trains nothing. Otherwise the heartbeat runs until the session exits, which releases every
    job (release). `stops[i]` is the cancel check of `jobs[i]`; wait_slot waits for the slot when
    `wait_for_slot` (a terminal's `manage.py train`)."""

    def __init__(self, jobs, *, wait_for_slot: bool = False, enqueue=None, member: str = "Job"):
        self.jobs = list(jobs)
        self.wait_for_slot = wait_for_slot
        self.enqueue = enqueue
        self.member = member
        self.heartbeat = Heartbeat(*self.jobs)
        self.stops = [cancel_check(job.pk, self.heartbeat) for job in self.jobs]
        self.requeued = False

    def __enter__(self):
        from gpus.services import lease_acquire

        lead = self.jobs[0]
        if not self.wait_for_slot and not lease_acquire(lead):
            # Another live job trains on a GPU this one needs (two workers started on one GPU, or
            # a DDP job across this worker's GPU): the jobs go back to their queue for another
            # worker, or for this one once that GPU is free, and this one trains nothing now.
            self._requeue(wait_reason(lead))
            return self
        self.heartbeat.start()
        return self

    def _requeue(self, reason: str) -> None:
        self.requeued = True
        time.sleep(settings.WORKER_SEEN_INTERVAL_S)  # not at once: the same busy worker may take it again
        for job in self.jobs:
            try:
                if self.enqueue is None:
                    services.job_requeue(job, reason)
                else:
                    services.job_requeue(job, reason, enqueue=False)
            except JobLost:
                logger.warning("%s %s was taken over while the slot was busy here; nothing to hand back",
                               self.member, job.pk)
        if self.enqueue is not None:
            from django.db import transaction

            transaction.on_commit(self.enqueue)

    def wait_slot(self, should_stop, on_busy=None) -> bool:
        """True once the slot is this run's (at once unless `wait_for_slot`); False when
        `should_stop` says so first. While it waits the jobs stay running, with this live pid and
        the heartbeat, so no worker's watchdog re-queues them."""
        if not self.wait_for_slot:
            return True
        from gpus.services import lease_wait

        return lease_wait(self.jobs[0], should_stop=should_stop, on_busy=on_busy)

    def __exit__(self, *exc):
        if self.requeued:
            return False
        # One `finally` for every run: whatever raised, each job's lease, staging folder and token go.
        try:
            self.heartbeat.stop()
        finally:
            for job in self.jobs:
                release(job)
        return False


def job_fail_with(job, err: BaseException) -> None:
    """The job's ending for what its run raised: what the spec or its inputs got wrong as it was
    said, an out-of-memory failure explained, any other crash named; nothing for a job another
    worker took over (JobLost), whose failure is not this run's to write either."""
    if isinstance(err, JobLost):
        _say_lost(job, err)
        return
    try:
        if isinstance(err, (EngineError, ServiceError)):
            services.job_fail(job, str(err))
        elif isinstance(err, (MemoryError, RuntimeError)) and _is_out_of_memory(err):
            services.job_fail(job, _describe_out_of_memory(TrainingJob.objects.get(pk=job.pk), err))
        else:
            logger.error("Job %s crashed", job.pk, exc_info=err)
            services.job_fail(job, f"{type(err).__name__}: {err}")
    except JobLost as lost:
        _say_lost(job, lost)


def _say_lost(job, lost: JobLost) -> None:
    logger.warning("Job %s was taken over by another run (attempt %s is stale); this run stops and writes "
                   "nothing more (%s)", job.pk, job.attempts, lost)


def _is_out_of_memory(err):
    return isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError" or "out of memory" in str(err).lower()


def _describe_out_of_memory(job, err):
    """What was needed, what there was, and what to change: the three things a user asks."""
    GB = 1024**3
    device = job.device or "cpu"
    if device.startswith("cuda"):
        import torch

        free, total = torch.cuda.mem_get_info(torch.device(device))
        where = f"{device}: {free / GB:.1f} GB free of {total / GB:.1f} GB"
    else:
        from engine.devices import system_memory

        total, free = system_memory()
        where = f"system RAM: {free / GB:.1f} GB available of {total / GB:.1f} GB"
    needed = ""
    if job.model_name and not job.activations_file:
        from training.admission import model as modelcheck

        try:
            # The model as the job recorded it when it was checked: the client's name is not resolved
            # again here, where no folder limits it.
            described = modelcheck.describe_resolved(job_model(job), token=job_hub_token(job))
            estimate = modelcheck.estimate(
                described, device_kind="cuda" if device.startswith("cuda") else "cpu",
                quantization=job.quantization, hidden_dim=job.hidden_dim, batch_size=job.batch_size,
                max_sequence_length=job.max_sequence_length, sae_batch_tokens=job.sae_batch_tokens,
                layer_number=job.layer_number,
            )
            needed = f" Estimated requirement: {estimate.total_bytes / GB:.1f} GB."
        except ServiceError:
            pass
    return (
        f"Out of memory during {job.phase.replace('_', ' ')} ({str(err).splitlines()[0][:200]}).{needed} "
        f"Available on {where}. Hint: lower batch_size (now {job.batch_size}) or max_sequence_length "
        f"(now {job.max_sequence_length}), lower sae_batch_tokens (now {job.sae_batch_tokens}) or hidden_dim "
        f"(now {job.hidden_dim}), or load the model with quantization '4bit'."
    )


def job_finish_outcome(job, outcome):
    """The row's ending, from the run's outcome, with the artifacts the run staged moved into place
    in the same transaction (services.job_finish): JobLost, and nothing moved, for a stale run."""
    if outcome.cancelled_in in ("extraction", "waiting"):
        message = "Cancelled during extraction" if outcome.cancelled_in == "extraction" else (
            "Cancelled before its turn in the sweep; nothing was trained")
        services.job_finish(job, status=TrainingJob.Status.CANCELLED, message=message)
        return
    result = outcome.result
    if outcome.cancelled_in == "training":
        # None: cancelled before the training step could hand back a result (torchrun's rank 0).
        message = f"Cancelled at epoch {result.total_epochs + 1}; checkpoints kept" if result else "Cancelled; checkpoints kept"
        if result and not math.isfinite(result.final_loss):
            # The loss is then null (services.job_finish), and this says why.
            message = f"Cancelled at epoch {result.total_epochs + 1} before its first training step, so no loss was measured"
        services.job_finish(
            job,
            status=TrainingJob.Status.CANCELLED,
            message=message,
            activations_path=str(outcome.activations_path or ""),
            current_loss=result.final_loss if result else None,
        )
        return
    moves = job_staged_moves(job)

    def final(path):
        return str(moves.get(Path(path), path))

    outputs = dict(
        training_stats=outcome.training_stats,
        model_path=final(outcome.paths.model),
        activations_path=str(outcome.activations_path or ""),  # none when the rows streamed
        metadata_path=final(outcome.paths.metadata),
        evaluation=outcome.evaluation,
        exports={name: final(path) for name, path in outcome.exports.items()},
        progress=1.0,
        current_epoch=result.total_epochs,
        current_loss=result.final_loss,
        files=moves,
    )
    if outcome.cancelled_in == "analysis":
        services.job_finish(
            job, status=TrainingJob.Status.CANCELLED,
            message=f"Cancelled during the feature analysis; the trained SAE was saved to {outputs['model_path']}",
            **outputs,
        )
        return
    services.job_finish(
        job,
        status=TrainingJob.Status.COMPLETED,
        message=f"Training completed: {result.total_epochs} epochs, final loss {result.final_loss:.6g} ({result.stopped_reason})",
        features_dir=final(outcome.features_dir),
        features=outcome.features,
        **outputs,
    )
