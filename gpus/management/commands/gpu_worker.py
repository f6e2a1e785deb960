"""`manage.py gpu_worker --gpu N`: the worker for GPU N of this host (one per GPU).

It becomes `manage.py qcluster` (same process, exec) with CUDA_VISIBLE_DEVICES=N, the queue
`mistudio-gpuN` (django-q2's Q_CLUSTER_NAME), one worker process, NVML-based CUDA checks in the
parent, and MISTUDIO_WORKER_GPU=N, so it registers as (host, gpuN) and leases that slot per job.
"""
import os
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from gpus.selectors import gpu_queue


class Command(BaseCommand):
    help = "Run the queue worker for one GPU of this host (start one per GPU)."

    def add_arguments(self, parser):
        parser.add_argument("--gpu", type=int, required=True, help="the host's GPU index (as nvidia-smi numbers it)")
        parser.add_argument("--host-name", default=None,
                            help="the name this host registers under (default MISTUDIO_HOST_NAME or the hostname)")
        parser.add_argument("--fake", action="store_true",
                            help="tests only: serve GPU N's queue but train on the CPU (no CUDA needed)")

    def handle(self, *args, gpu, host_name, fake, **options):
        if gpu < 0:
            raise CommandError("--gpu must be 0 or more")
        if not fake:
            from engine.devices import gpu_inventory  # NVML: no CUDA context in this process

            inventory = gpu_inventory()
            if gpu not in {g.index for g in inventory.gpus}:
                found = ", ".join(str(g.index) for g in inventory.gpus) or "none"
                raise CommandError(f"GPU {gpu} is not on this host (NVML sees: {found}; {inventory.error or 'ok'})")
        env = {
            **os.environ,
            "CUDA_VISIBLE_DEVICES": str(gpu) if not fake else "",
            "PYTORCH_NVML_BASED_CUDA_CHECK": "1",
            "Q_CLUSTER_NAME": gpu_queue(gpu),
            "MISTUDIO_WORKER_GPU": str(gpu),
            "MISTUDIO_WORKERS": "1",  # a job holds the whole GPU
            "MISTUDIO_FAKE_GPU": "1" if fake else "0",
            "MISTUDIO_HOST_NAME": host_name or settings.HOST_NAME,
        }
        manage = str(settings.BASE_DIR / "manage.py")
        self.stdout.write(f"GPU {gpu} worker on {env['MISTUDIO_HOST_NAME']}: queue {env['Q_CLUSTER_NAME']}")
        self.stdout.flush()
        os.execve(sys.executable, [sys.executable, manage, "qcluster"], env)
