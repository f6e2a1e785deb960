"""The django-q2 task: a job id in, the same pipeline as `manage.py train`."""


def run_training_job(job_id: str) -> str | None:
    from training.pipeline import job_run

    job = job_run(job_id)
    return job.status if job else None
