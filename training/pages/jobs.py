"""Pages for people: the job list, the New job form (training.pages.job_form), a job's page (curves, evaluation, features) and a feature's
page (top contexts, activation histogram, logit effect), and the GPU page (each GPU NVML sees, its
memory and utilization, and the job that holds it). Owners and staff only; anyone else's job
answers 404, as in the API, and shows as busy on the GPU page."""
from datetime import datetime

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponseGone
from django.shortcuts import render

from engine.devices import gpu_inventory, system_memory
from gpus.selectors import workers_document
from mistudio.errors import Conflict, NotFound
from mistudio.throttles import throttled_page
from training.artifacts import features as feature_store
from training import selectors
from training.artifacts import downloads
from training.pages import job_form
from training.models import TrainingJob
from training.artifacts.retention import Purged


def _job(request, job_id):
    try:
        return selectors.job_get(user=request.user, job_id=job_id)
    except NotFound:
        raise Http404(f"Job {job_id} not found") from None


@login_required
def jobs_page(request):
    jobs = selectors.jobs_visible_to(request.user).select_related("corpus", "owner", "sweep")[:200]
    return render(request, "training/jobs_page.html", {"groups": selectors.jobs_by_sweep(jobs)})


@login_required
@throttled_page
def new_job_page(request):
    return job_form.form_page(request, submit=job_form.job_submit, context=job_form.job_form_context,
                              template="training/new_job_page.html", page="job-page")


@login_required
def job_page(request, job_id):
    job = _job(request, job_id)
    return render(request, "training/job_page.html", {
        "job": job,
        "parameters": selectors.job_parameters(job),
        "evaluation": _evaluation_rows(job.evaluation),
        "artifacts": selectors.job_artifacts(job),
        "downloads": downloads.available_artifacts(job),
        "runs": _run_rows(job.runs),
    })


@login_required
def feature_page(request, job_id, index):
    job = _job(request, job_id)
    try:
        feature = feature_store.feature_detail(job, index)
    except NotFound as err:
        raise Http404(str(err)) from None
    except Purged as err:
        return HttpResponseGone(err.message, content_type="text/plain; charset=utf-8")
    except Conflict as err:
        # Not ready (queued, running) or never made (ended before its analysis): the API's 409, as a page.
        return render(request, "training/feature_unavailable.html", {"job": job, "reason": err.message}, status=409)
    return render(request, "training/feature_page.html", {
        "job": job, "feature": feature, "frequency_percent": f"{feature['frequency']:.3%}",
    })


def _evaluation_rows(evaluation: dict | None) -> list[tuple[str, str]]:
    rows = []
    for key, value in (evaluation or {}).items():
        if key in ("density_histogram", "warnings") or value is None:
            continue
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, dict):  # prefix_explained_variance: "4: 0.21, 16: 0.55, 32: 0.8"
            value = ", ".join(f"{name}: {'-' if number is None else f'{number:.4g}'}" for name, number in value.items())
        rows.append((key.replace("_", " "), value))
    return rows


def _run_rows(runs: list) -> list[dict]:
    """The job's runs as the page shows them: a resumed job has one per worker that ran it."""
    rows = []
    for run in selectors.job_runs_summary(runs)["runs"]:
        started, ended = run["started_at"], run["ended_at"]
        rows.append({**run, "started_at": datetime.fromisoformat(started) if started else None,
                     "ended_at": datetime.fromisoformat(ended) if ended else None})
    return rows


GB = 1024**3


@login_required
def gpu_page(request):
    inventory = gpu_inventory()  # NVML only: the web process never creates a CUDA context
    host = settings.HOST_NAME
    running = TrainingJob.objects.filter(status=TrainingJob.Status.RUNNING)
    visible = set(selectors.jobs_visible_to(request.user).filter(status=TrainingJob.Status.RUNNING).values_list("id", flat=True))
    gpus = []
    for gpu in inventory.gpus:
        holders = [job for job in running if job.gpu_id == gpu.index and job.worker_host in ("", host)]
        gpus.append({
            "index": gpu.index,
            "name": gpu.name,
            "used_gb": gpu.memory_used / GB,
            "total_gb": gpu.memory_total / GB,
            "free_gb": gpu.memory_free / GB,
            "memory_share": gpu.memory_used / gpu.memory_total if gpu.memory_total else 0.0,
            "utilization": gpu.utilization,
            # Someone else's job is shown as busy, never by id (ids of other users' jobs stay private).
            "jobs": [{"id": job.id, "visible": job.id in visible} for job in holders],
        })
    cpu_jobs = [job for job in running if job.gpu_id is None or not inventory.gpus]
    total, available = system_memory()
    return render(request, "gpus/gpu_page.html", {
        "host": host,
        "gpus": gpus,
        "nvml_error": inventory.error,
        "ram_total_gb": total / GB,
        "ram_available_gb": available / GB,
        "cpu_jobs": [{"id": job.id, "visible": job.id in visible} for job in cpu_jobs],
        "workers": workers_document(request.user),
    })
