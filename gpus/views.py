from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from engine.devices import gpu_inventory

GB = 1024**3


class HealthSerializer(serializers.Serializer):
    service = serializers.CharField()
    status = serializers.CharField()
    version = serializers.CharField()
    gpu_available = serializers.BooleanField()
    gpu_count = serializers.IntegerField()
    memory_status = serializers.DictField()
    nvml_error = serializers.CharField(allow_null=True)


class GpuStatusSerializer(serializers.Serializer):
    cuda_available = serializers.BooleanField()
    device_count = serializers.IntegerField()
    current_device = serializers.IntegerField(allow_null=True)
    gpus = serializers.DictField()
    message = serializers.CharField()


class HealthView(APIView):
    permission_classes = [AllowAny]
    authentication_classes = []

    @extend_schema(responses={200: HealthSerializer}, summary="Health check with GPU memory")
    def get(self, request):
        inventory = gpu_inventory()
        return Response({
            "service": "miStudioTrain",
            "status": "healthy",
            "version": settings.SERVICE_VERSION,
            "gpu_available": bool(inventory.gpus),
            "gpu_count": len(inventory.gpus),
            "memory_status": {
                f"gpu_{g.index}": {"free_gb": round(g.memory_free / GB, 2), "total_gb": round(g.memory_total / GB, 2)}
                for g in inventory.gpus
            },
            "nvml_error": inventory.error,
        })


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
        })
