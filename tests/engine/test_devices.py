import pynvml
import pytest
import torch

from engine import devices
from engine.errors import DeviceError


def _no_driver():
    raise pynvml.NVMLError_LibraryNotFound()


def test_without_a_driver_the_inventory_is_empty_and_says_why(monkeypatch):
    monkeypatch.setattr(pynvml, "nvmlInit", _no_driver)
    inventory = devices.gpu_inventory()
    assert inventory.driver_available is False
    assert inventory.gpus == []
    assert "NVML" in inventory.error


def test_system_memory_reports_available_within_total():
    total, available = devices.system_memory()
    assert 0 < available <= total


def test_without_cuda_the_worker_uses_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.select_device(None) == "cpu"


def test_without_cuda_a_requested_gpu_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="GPU 0 was requested but this worker has no CUDA device"):
        devices.select_device(0)


def test_a_gpu_index_beyond_the_count_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceError, match=r"GPU 3 does not exist: this worker sees 1 GPU\(s\) \(0\)"):
        devices.select_device(3)


def test_with_no_preference_the_gpu_with_most_free_memory_wins(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    free = {0: 10, 1: 30, 2: 20}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (free[i], 40))
    assert devices.select_device(None) == "cuda:1"
