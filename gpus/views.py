from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from engine.devices import gpu_inventory
from gpus.selectors import workers_document

GB = 1024**3


class WorkerSerializer(serializers.Serializer):
    host = serializers.CharField()
    device = serializers.CharField(help_text="gpuN (that host's GPU N) or default (the CPU, or any GPU of the host)")
    gpu_index = serializers.IntegerField(allow_null=True)
    gpu_name = serializers.CharField(allow_null=True)
    queue = serializers.CharField()
    pid = serializers.IntegerField(allow_null=True)
    fake = serializers.BooleanField(help_text="Tests only: a GPU slot that trains on the CPU")
    last_seen_at = serializers.DateTimeField(allow_null=True, help_text="Null for a GPU no worker serves, with a row "
                                                                         "only because a DDP job leased it")
    alive = serializers.BooleanField(help_text="Seen within MISTUDIO_HEARTBEAT_STALE_S")
    job_id = serializers.CharField(allow_null=True, help_text="The job holding this slot's lease")


class HealthSerializer(serializers.Serializer):
    service = serializers.CharField()
    status = serializers.CharField()
    version = serializers.CharField()
    gpu_available = serializers.BooleanField()
    gpu_count = serializers.IntegerField()
    memory_status = serializers.DictField()
    nvml_error = serializers.CharField(allow_null=True, required=False, help_text="Signed-in callers only")
    workers = WorkerSerializer(many=True, required=False, help_text="Signed-in callers only: every registered worker "
                                                                    "on every host, with when it was last seen")


class GpuStatusSerializer(serializers.Serializer):
    cuda_available = serializers.BooleanField()
    device_count = serializers.IntegerField()
    current_device = serializers.IntegerField(allow_null=True)
    gpus = serializers.DictField()
    message = serializers.CharField()
    workers = WorkerSerializer(many=True, help_text="Every registered worker on every host, with when it was last seen")


class HealthView(APIView):
    """Anyone may ask: an anonymous caller gets the seed's document (service, version, GPU count and
    memory); a signed-in one (a token or a session) also the NVML error and the workers, with their
    hosts, pids and queues, as /gpu/status shows them."""

    permission_classes = [AllowAny]

    def perform_authentication(self, request):
        # A health check answers every caller: a bad or expired token is only anonymous here.
        try:
            request.user
        except exceptions.AuthenticationFailed:
            pass  # DRF has already made the request anonymous

    @extend_schema(responses={200: HealthSerializer}, summary="Health check with GPU memory")
    def get(self, request):
        inventory = gpu_inventory()
        health = {
            "service": "miStudioTrain",
            "status": "healthy",
            "version": settings.SERVICE_VERSION,
            "gpu_available": bool(inventory.gpus),
            "gpu_count": len(inventory.gpus),
            "memory_status": {
                f"gpu_{g.index}": {"free_gb": round(g.memory_free / GB, 2), "total_gb": round(g.memory_total / GB, 2)}
                for g in inventory.gpus
            },
        }
        if request.user is not None and request.user.is_authenticated:  # anonymous is None here (settings)
            health.update(nvml_error=inventory.error, workers=WorkerSerializer(_workers(request), many=True).data)
        return Response(health)


class GpuStatusView(APIView):
    @extend_schema(responses={200: GpuStatusSerializer}, summary="GPU status from NVML")
    def get(self, request):
        # NVML, not torch.cuda: the web process must never create a CUDA context.
        inventory = gpu_inventory()
        gpus = {
            str(g.index): {
                "name": g.name,
                "memory_total": g.memory_total,
                "memory_allocated": g.memory_used,
                "memory_free": g.memory_free,
                "free_gb": round(g.memory_free / GB, 2),
                "utilization": g.utilization,
            }
            for g in inventory.gpus
        }
        message = (
            f"{len(gpus)} GPU(s) found through NVML"
            if gpus
            else f"No NVIDIA GPU is available ({inventory.error or 'NVML found no devices'}); training runs on the CPU"
        )
        return Response({
            "cuda_available": bool(gpus),
            "device_count": len(gpus),
            "current_device": 0 if gpus else None,
            "gpus": gpus,
            "message": message,
            "workers": WorkerSerializer(_workers(request), many=True).data,
        })


def _workers(request):
    """Workers for this (signed-in) caller: a held job's id only where the caller may see that job."""
    workers = workers_document(request.user)
    for worker in workers:
        if worker["job_id"] and not worker.pop("job_visible"):
            worker["job_id"] = "another user's job"
        worker.pop("job_visible", None)
    return workers
