"""Pages for people: the job list, a job's page (curves, evaluation, features) and a feature's
page (top contexts, activation histogram, logit effect). Owners and staff only; anyone else's job
answers 404, as in the API."""
from datetime import datetime

from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import render

from mistudio.errors import NotFound
from training import features as feature_store
from training import services


def _job(request, job_id):
    try:
        return services.job_get(user=request.user, job_id=job_id)
    except NotFound:
        raise Http404(f"Job {job_id} not found") from None


@login_required
def jobs_page(request):
    jobs = services.jobs_visible_to(request.user).select_related("corpus", "owner")[:200]
    return render(request, "training/jobs_page.html", {"jobs": jobs})


@login_required
def job_page(request, job_id):
    job = _job(request, job_id)
    return render(request, "training/job_page.html", {
        "job": job,
        "parameters": services.job_parameters(job),
        "evaluation": _evaluation_rows(job.evaluation),
        "artifacts": services.job_artifacts(job),
        "runs": _run_rows(job.runs),
    })


@login_required
def feature_page(request, job_id, index):
    job = _job(request, job_id)
    try:
        feature = feature_store.feature_detail(job, index)
    except NotFound as err:
        raise Http404(str(err)) from None
    return render(request, "training/feature_page.html", {
        "job": job, "feature": feature, "frequency_percent": f"{feature['frequency']:.3%}",
    })


def _evaluation_rows(evaluation: dict | None) -> list[tuple[str, str]]:
    rows = []
    for key, value in (evaluation or {}).items():
        if key == "density_histogram" or value is None:
            continue
        if isinstance(value, float):
            value = f"{value:.4g}"
        rows.append((key.replace("_", " "), value))
    return rows


def _run_rows(runs: list) -> list[dict]:
    """The job's runs as the page shows them: a resumed job has one per worker that ran it."""
    rows = []
    for run in services.job_runs_summary(runs)["runs"]:
        started, ended = run["started_at"], run["ended_at"]
        rows.append({**run, "started_at": datetime.fromisoformat(started) if started else None,
                     "ended_at": datetime.fromisoformat(ended) if ended else None})
    return rows
