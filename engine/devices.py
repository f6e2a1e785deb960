"""Which GPUs and how much memory this machine has.

Importing this module is free: the web process and the django-q2 parent call gpu_inventory() and
must never create a CUDA context (workers are forked), so NVML is used for the inventory and torch
is imported only inside select_device(), which only the worker calls.
"""

import functools
from dataclasses import dataclass, field

from engine.errors import DeviceError


@dataclass
class GpuInfo:
    index: int
    name: str
    memory_total: int
    memory_used: int
    memory_free: int
    utilization: float  # 0..1


@dataclass
class GpuInventory:
    driver_available: bool
    gpus: list[GpuInfo] = field(default_factory=list)
    error: str | None = None


def gpu_inventory() -> GpuInventory:
    """The GPUs NVML sees. Never raises: no driver is a normal state on a CPU machine."""
    try:
        import pynvml
    except ImportError as exc:
        return GpuInventory(driver_available=False, gpus=[], error=f"nvidia-ml-py is not installed: {exc}")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return GpuInventory(driver_available=False, gpus=[], error=f"NVML unavailable: {exc}")
    try:
        gpus = [_gpu_info(pynvml, index) for index in range(pynvml.nvmlDeviceGetCount())]
        return GpuInventory(driver_available=True, gpus=gpus, error=None)
    except pynvml.NVMLError as exc:
        return GpuInventory(driver_available=True, gpus=[], error=f"NVML query failed: {exc}")
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def _gpu_info(pynvml, index: int) -> GpuInfo:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    name = pynvml.nvmlDeviceGetName(handle)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    try:
        utilization = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100
    except pynvml.NVMLError:  # not supported on some MIG slices and virtual GPUs
        utilization = 0.0
    return GpuInfo(
        index=index,
        name=name.decode() if isinstance(name, bytes) else str(name),
        memory_total=int(memory.total),
        memory_used=int(memory.used),
        memory_free=int(memory.free),
        utilization=float(utilization),
    )


def system_memory() -> tuple[int, int]:
    """(total, available) RAM in bytes: available counts the page cache the kernel can drop
    (Linux's MemAvailable), not only the free pages."""
    import psutil

    memory = psutil.virtual_memory()
    return memory.total, memory.available


def select_device(gpu_id: int | None) -> str:
    """'cuda:N' or 'cpu'. Creates a CUDA context: call it only in the worker."""
    import torch

    if not torch.cuda.is_available():
        if gpu_id is not None:
            raise DeviceError(f"GPU {gpu_id} was requested but this worker has no CUDA device: leave gpu_id empty to use the CPU")
        return "cpu"
    count = torch.cuda.device_count()
    if gpu_id is not None:
        if not 0 <= gpu_id < count:
            indices = ", ".join(str(i) for i in range(count))
            raise DeviceError(f"GPU {gpu_id} does not exist: this worker sees {count} GPU(s) ({indices})")
        return f"cuda:{gpu_id}"
    free = [torch.cuda.mem_get_info(i)[0] for i in range(count)]
    return f"cuda:{max(range(count), key=free.__getitem__)}"


CPU_BF16_CHOICES = ("auto", "on", "off")


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (Intel AMX, Sapphire Rapids and
    later): there a bf16 matmul runs several times faster than float32 (bench/RESULTS.md). Reads
    the kernel's CPU flags once per process, so the web process can ask without importing torch."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return "amx_bf16" in line.split()
    except OSError:
        pass
    return False


def cpu_uses_bf16(cpu_bf16: str) -> bool:
    """The CPU precision policy: "on" computes in bfloat16 (weights and activations bf16, SAE
    matmuls under bf16 autocast with float32 master weights, as on a GPU), "off" in float32,
    "auto" in bf16 exactly where the CPU has hardware bf16 matmuls."""
    if cpu_bf16 not in CPU_BF16_CHOICES:
        raise DeviceError(f"cpu_bf16 must be one of {', '.join(CPU_BF16_CHOICES)}, not {cpu_bf16!r}")
    return cpu_bf16 == "on" or (cpu_bf16 == "auto" and cpu_has_fast_bf16())
