"""A sweep's run, from its queued members to their endings: the worker's side of engine.run.sweep.
The task claims every queued member at once (a recovered sweep: those that did not end), holds
the worker's slot for the member whose turn it is, keeps all of them alive with one heartbeat,
and ends each member's row as soon as the engine says it ended, as a single job's run would
(training.worker.job). A member's cancel stops it alone; the extraction stops when every member
waiting for it is cancelled. A streaming sweep (engine.run.sweep) trains its members at once and
ends them in order, each as soon as its evaluation and analysis are done."""
import logging

from training import services
from training.artifacts import layout
from training.worker.device import job_device
from training.worker.session import RunSession, job_fail_with, job_finish_outcome
from training.worker.reporting import job_callbacks
from training.worker.spec import job_spec
from training.models import Sweep, TrainingJob

logger = logging.getLogger("training")


site_path = layout.sweep_site_path


def sweep_run(sweep_id: str, *, on_progress=None, on_member_end=None, wait_for_slot: bool = False) -> Sweep | None:
    """Claim the sweep's queued members and run them to their endings. `on_progress(dict)` and
    `wait_for_slot` as training.worker.job.job_run; `on_member_end(job)` after each member's ending
    is on its row (a terminal prints it)."""
    sweep = Sweep.objects.filter(pk=sweep_id).first()
    if sweep is None:
        logger.info("Sweep %s is gone; nothing to run", sweep_id)
        return None
    queued = sweep.jobs.filter(status=TrainingJob.Status.QUEUED).order_by("created_at", "pk")
    jobs = [job for job in (services.job_claim(pk) for pk in queued.values_list("pk", flat=True)) if job is not None]
    if not jobs:
        logger.info("Sweep %s has no queued member; nothing to run", sweep_id)
        return sweep
    report = on_progress or (lambda update: None)
    with RunSession(jobs, wait_for_slot=wait_for_slot, enqueue=lambda: services.sweep_enqueue(sweep_id),
                    member="Sweep member") as session:
        if session.requeued:
            return sweep
        stops = session.stops
        if not session.wait_slot(lambda: all(stop() for stop in stops)):
            for job in jobs:
                try:
                    services.job_finish(job, status=TrainingJob.Status.CANCELLED,
                                        message="Cancelled while waiting for the GPU slot")
                except services.JobLost:
                    logger.warning("Sweep member %s was taken over while it waited here", job.pk)
        else:
            _run(sweep, jobs, stops, report, on_member_end or (lambda job: None))
    sweep.refresh_from_db()
    return sweep


def _run(sweep, jobs, stops, report, on_member_end):
    from engine.devices import select_device
    from engine.run.sweep import SweepCallbacks, SweepSpec, run_sweep, site_of

    device = job_device(jobs[0], select_device)
    specs = [job_spec(job, device) for job in jobs]
    callbacks = [job_callbacks(job, device, report, stop) for job, stop in zip(jobs, stops)]
    spec = SweepSpec(members=specs, site_paths={site_of(s): site_path(sweep.pk, *site_of(s)) for s in specs})
    ended = set()

    def extracted(extraction):
        Sweep.objects.filter(pk=sweep.pk).update(lm_forward_batches=extraction.forward_batches,
                                                 tokens_extracted=extraction.n_tokens,
                                                 extraction_seconds=round(extraction.seconds, 3))
        for number, job in enumerate(jobs[1:], start=1):
            try:
                services.job_update_progress(job, phase=TrainingJob.Phase.WAITING,
                                             message=f"Activations extracted with the sweep's other members; "
                                                     f"training after the {number} member(s) before it")
            except services.JobLost:
                pass  # that member alone stops, at its next cancel check (its heartbeat found it lost)

    def streamed(passes):
        # No file: the members trained together, the model run once per batch for all of them.
        Sweep.objects.filter(pk=sweep.pk).update(lm_forward_batches=passes.forward_batches, tokens_extracted=passes.rows)

    def member_end(index, outcome, error):
        job = jobs[index]
        if error is None:
            try:
                job_finish_outcome(job, outcome)
            except services.JobLost as lost:
                job_fail_with(job, lost)  # says so in the log, and writes nothing
        else:
            job_fail_with(job, error)
        services.job_staging_remove(job)
        ended.add(index)
        if index + 1 < len(jobs):
            from gpus.services import lease_hand_over

            lease_hand_over(job, jobs[index + 1])  # the slot's holder is the member that trains now
        on_member_end(TrainingJob.objects.get(pk=job.pk))

    try:
        run_sweep(spec, SweepCallbacks(members=callbacks, on_extracted=extracted, on_streamed=streamed,
                                      on_member_end=member_end))
    except Exception as err:  # noqa: BLE001 - loading the model failed, say: every member not ended fails with it
        for index, job in enumerate(jobs):
            if index not in ended:
                job_fail_with(job, err)
                on_member_end(TrainingJob.objects.get(pk=job.pk))
