"""django-q2 entry points: a job id in, the same pipeline as `manage.py train`."""
import logging

logger = logging.getLogger("training")


def run_training_job(job_id: str) -> str | None:
    from training.worker.job import job_run

    job = job_run(job_id)
    return job.status if job else None


def recover_on_worker_start(sender, proc_name=None, **kwargs):
    from corpora.services import partial_uploads_remove_stale
    from training.recovery import attempt_files_remove_stale, jobs_recover_stale

    for check, what in ((jobs_recover_stale, "Recovering stale jobs"),
                        (attempt_files_remove_stale, "Removing what stale runs left"),
                        (partial_uploads_remove_stale, "Removing stale uploads")):
        try:
            check()
        except Exception:  # noqa: BLE001 - a failed check must not keep the worker from starting
            logger.exception("%s failed in %s", what, proc_name)


def run_sweep(sweep_id: str) -> str | None:
    """One task per sweep: every member trained from one pass over the corpus (training.worker.sweep)."""
    from training.worker.sweep import sweep_run

    sweep = sweep_run(sweep_id)
    return sweep.pk if sweep else None
