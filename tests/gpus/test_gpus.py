import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def test_health_answers_without_a_gpu():
    body = APIClient().get("/health").json()
    assert body["service"] == "miStudioTrain" and body["status"] == "healthy" and body["version"] == "1.2.0"
    assert body["gpu_available"] is False and body["gpu_count"] == 0 and body["memory_status"] == {}


def test_gpu_status_answers_200_without_a_driver(alice_api):
    response = alice_api.get("/gpu/status")
    assert response.status_code == 200
    body = response.json()
    assert body["cuda_available"] is False and body["device_count"] == 0 and body["gpus"] == {}
    assert body["current_device"] is None
    assert "CPU" in body["message"]


def test_the_web_process_never_initialises_cuda(alice_api):
    import sys

    alice_api.get("/gpu/status")
    alice_api.get("/health")
    torch = sys.modules.get("torch")
    assert torch is None or not torch.cuda.is_initialized()
