"""One training run, from a claimed job to its ending. Runs in a worker process or in
`manage.py train`. The engine runs the job (engine.run, with the spec and callbacks of
training.worker.spec); this module is the worker's side of it: the claim, the GPU slot's lease, the
heartbeat, cancel checks, and the ending on the row, an out-of-memory failure explained.

A run writes to its job only while it owns it (training.services: the attempt it claimed is its
fencing token). When a write does not land (JobLost: another run took the job over while this one
was paused or cut off), or its heartbeat finds the job gone, the run stops at once, writes nothing
more, and releases only what it holds (run_release: its lease, its staging folder)."""
import logging
import math
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from django.conf import settings

from engine.errors import EngineError
from mistudio.errors import ServiceError
from training import selectors, services
from training.admission import model as modelcheck
from training.worker.spec import JobLost, Throttle, job_callbacks, job_hub_token, job_model, job_spec, job_staged_moves
from training.models import TrainingJob

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


def job_device(job, select_device):
    """A GPU worker sees only its own GPU (CUDA_VISIBLE_DEVICES), as cuda:0, and extracts a gpu_ids
    job there (its queue is the job's first GPU's); a fake one (tests) trains on the CPU; the
    default worker picks as it always has."""
    if settings.WORKER_GPU is not None:
        if settings.FAKE_GPU:
            return "cpu"
        if job.gpu_ids:
            from training.worker import ddp

            ddp.check_gpus_on_host(job)
        return select_device(0)
    if job.gpu_ids:
        from training.worker import ddp

        return ddp.worker_device(job, select_device)
    return select_device(job.gpu_id)


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


def job_run(job_id: str, *, on_progress=None, wait_for_slot=False) -> TrainingJob | None:
    """Claim the job and run it to an ending. `on_progress(dict)` lets a terminal show a bar.
    `wait_for_slot`: when another job trains on this machine's slot, wait for it and then train
    here (a terminal's `manage.py train`), rather than hand the job back to the queue (a worker)."""
    job = services.job_claim(job_id)
    if job is None:
        logger.info("Job %s is not queued any more; nothing to run", job_id)
        return None
    from gpus.services import lease_acquire, lease_wait

    if not wait_for_slot and not lease_acquire(job):
        # Another live job trains on a GPU this one needs (two workers started on one GPU, or a
        # DDP job across this worker's GPU): the job goes back to its queue for another worker, or
        # for this one once that GPU is free, and this one trains nothing now.
        reason = wait_reason(job)
        time.sleep(settings.WORKER_SEEN_INTERVAL_S)  # not at once: the same busy worker may take it again
        try:
            services.job_requeue(job, reason)
        except JobLost:
            logger.warning("Job %s was taken over while its slot was busy here; nothing to hand back", job_id)
        return TrainingJob.objects.get(pk=job_id)
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    report = on_progress or (lambda update: None)
    heartbeat = Heartbeat(job)
    heartbeat.start()
    should_stop = cancel_check(job.id, heartbeat)

    def slot_busy(slot):
        message = f"Waiting for GPU slot {slot}: job {slot.job_id} trains on it"
        services.job_update_progress(job, phase=TrainingJob.Phase.WAITING, message=message)
        report({"phase": "waiting", "message": message})

    try:
        # While it waits the job stays running, with this live pid and the heartbeat above, so no
        # worker's watchdog re-queues it; a cancel request ends the wait.
        if wait_for_slot and not lease_wait(job, should_stop=should_stop, on_busy=slot_busy):
            services.job_finish(job, status=TrainingJob.Status.CANCELLED,
                                message="Cancelled while waiting for the GPU slot")
        else:
            if wait_for_slot:
                services.job_update_progress(job, phase=TrainingJob.Phase.LOADING)
            _run(job, report, should_stop)
    except Exception as err:  # noqa: BLE001 - any crash must end the job, not leave it running
        job_fail_with(job, err)
    finally:
        heartbeat.stop()
        run_release(job)
    return TrainingJob.objects.get(pk=job_id)


def run_release(job) -> None:
    """What a run holds, released whatever its ending: its slots' lease and its staging folder
    (moved into place by its ending, or a stale or failed run's leftovers). The token is gone too
    (job_finish wipes it; this covers a crash in it), unless the job went back to the queue to
    resume and still needs it, or another run took it over (a newer attempt: its token, not ours)."""
    from gpus.services import lease_release

    lease_release(job)
    services.job_staging_remove(job)
    TrainingJob.objects.filter(pk=job.pk, attempts=job.attempts).exclude(status=TrainingJob.Status.QUEUED).exclude(
        encrypted_hf_token="").update(encrypted_hf_token="")


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


def _run(job, report, should_stop):
    """The job's run in the engine, then its ending on the row."""
    from engine.devices import select_device
    from engine.run import run

    device = job_device(job, select_device)
    check_fits_device(job, device)
    train = None
    if job.gpu_ids:
        from training.worker import ddp

        train = ddp.torchrun_step(job, report)
    outcome = run(job_spec(job, device), job_callbacks(job, device, report, should_stop), train=train)
    job_finish_outcome(job, outcome)


def check_fits_device(job, device: str) -> None:
    """A ServiceError, before anything is loaded, when the job's estimate exceeds all the memory of
    the device it got: its run would be killed for memory (the kernel's OOM killer leaves no
    exception to catch), and so would each resumed run after it, MISTUDIO_MAX_JOB_ATTEMPTS times.
    The web process refuses such jobs when they are asked for; this catches those whose device was
    not known then (another host's GPU) or that a worker with less memory took. A job staff forced
    (its memory_check says so), a multi-GPU job and one on an activations file are run as asked."""
    if job.activations_file or job.gpu_ids or job.memory_check.startswith("forced") or not job.model_info:
        return
    from engine.devices import system_memory
    from engine.models.info import model_sizes
    from engine.models.resolve import load_config

    sizes = dict(hidden_dim=job.hidden_dim, batch_size=job.batch_size, max_sequence_length=job.max_sequence_length,
                 sae_batch_tokens=job.sae_batch_tokens, layer_number=job.layer_number)
    on_cuda = str(device).startswith("cuda")
    try:
        config = load_config(job_model(job), token=job_hub_token(job))
        described = modelcheck.DescribedModel(resolved=None, sizes=model_sizes(config),
                                              info=SimpleNamespace(parameter_count=job.model_info["parameter_count"]))
        needed = modelcheck.estimate(described, device_kind="cuda" if on_cuda else "cpu",
                                     quantization=job.quantization if on_cuda else None, **sizes)
    except (EngineError, KeyError):
        return  # the run itself says what is wrong with the model
    if on_cuda:
        import torch

        capacity, where = torch.cuda.mem_get_info(torch.device(device))[1], device
    else:
        capacity, where = system_memory()[0], "system RAM"
    if needed.total_bytes > capacity:
        raise ServiceError(modelcheck.memory_refusal(needed, capacity, where, sizes))


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
