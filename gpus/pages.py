"""The GPU page: each GPU NVML sees, its memory and utilization, and the job that holds it."""
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from engine.devices import gpu_inventory, system_memory
from gpus.services import workers_document
from training.models import TrainingJob
from training.services import jobs_visible_to

GB = 1024**3


@login_required
def gpu_page(request):
    inventory = gpu_inventory()  # NVML only: the web process never creates a CUDA context
    host = settings.HOST_NAME
    running = TrainingJob.objects.filter(status=TrainingJob.Status.RUNNING)
    visible = set(jobs_visible_to(request.user).filter(status=TrainingJob.Status.RUNNING).values_list("id", flat=True))
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
