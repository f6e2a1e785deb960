"""One training run, from a claimed job to its ending. Runs in a worker process or in
`manage.py train`. The engine runs the job (engine.run, with the spec and callbacks of
training.worker.spec); this module is the worker's side of it: the claim, the device, and the
ending on the row, an out-of-memory failure explained. The GPU slot's lease, the heartbeat, the
cancel checks and what is released at the end are the run's session (training.worker.session).

A run writes to its job only while it owns it (training.services: the attempt it claimed is its
fencing token). When a write does not land (JobLost: another run took the job over while this one
was paused or cut off), or its heartbeat finds the job gone, the run stops at once, writes nothing
more, and releases only what it holds (training.worker.session: its lease, its staging folder)."""
import logging
import os

from training import services
from training.worker.device import check_fits_device, job_device
from training.worker.session import RunSession, job_fail_with, job_finish_outcome
from training.worker.reporting import job_callbacks, paused_at_phases
from training.worker.spec import job_spec
from training.models import TrainingJob

logger = logging.getLogger("training")


def job_run(job_id: str, *, on_progress=None, wait_for_slot=False) -> TrainingJob | None:
    """Claim the job and run it to an ending. `on_progress(dict)` lets a terminal show a bar.
    `wait_for_slot`: when another job trains on this machine's slot, wait for it and then train
    here (a terminal's `manage.py train`), rather than hand the job back to the queue (a worker)."""
    job = services.job_claim(job_id)
    if job is None:
        logger.info("Job %s is not queued any more; nothing to run", job_id)
        return None
    report = paused_at_phases(on_progress or (lambda update: None))

    def slot_busy(slot):
        message = f"Waiting for GPU slot {slot}: job {slot.job_id} trains on it"
        services.job_update_progress(job, phase=TrainingJob.Phase.WAITING, message=message)
        report({"phase": "waiting", "message": message})

    with RunSession([job], wait_for_slot=wait_for_slot) as session:
        if session.requeued:
            return TrainingJob.objects.get(pk=job_id)
        os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
        should_stop = session.stops[0]
        try:
            # A cancel request ends the wait.
            if not session.wait_slot(should_stop, on_busy=slot_busy):
                services.job_finish(job, status=TrainingJob.Status.CANCELLED,
                                    message="Cancelled while waiting for the GPU slot")
            else:
                if wait_for_slot:
                    services.job_update_progress(job, phase=TrainingJob.Phase.LOADING)
                _run(job, report, should_stop)
        except Exception as err:  # noqa: BLE001 - any crash must end the job, not leave it running
            job_fail_with(job, err)
    return TrainingJob.objects.get(pk=job_id)


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


