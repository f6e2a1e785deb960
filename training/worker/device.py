"""The device a job's run trains on (job_device), and whether the job fits it (check_fits_device),
asked before anything is loaded."""
from types import SimpleNamespace

from django.conf import settings

from engine.errors import EngineError
from mistudio.errors import ServiceError
from training.admission import model as modelcheck
from training.worker.spec import job_hub_token, job_model


def job_device(job, select_device):
    """A GPU worker sees only its own GPU (CUDA_VISIBLE_DEVICES), as cuda:0, and extracts a gpu_ids
    job there (its queue is the job's first GPU's); a fake one (tests) trains on the CPU; the
    default worker picks as it always has."""
    if settings.WORKER_GPU is not None:
        if settings.FAKE_GPU:
            return "cpu"
        if job.gpu_ids:
            from training.worker import ddp

            ddp.check_gpus_on_host(job)
        return select_device(0)
    if job.gpu_ids:
        from training.worker import ddp

        return ddp.worker_device(job, select_device)
    return select_device(job.gpu_id)


def check_fits_device(job, device: str) -> None:
    """A ServiceError, before anything is loaded, when the job's estimate exceeds all the memory of
    the device it got: its run would be killed for memory (the kernel's OOM killer leaves no
    exception to catch), and so would each resumed run after it, MISTUDIO_MAX_JOB_ATTEMPTS times.
    The web process refuses such jobs when they are asked for; this catches those whose device was
    not known then (another host's GPU) or that a worker with less memory took. A job staff forced
    (its memory_check says so), a multi-GPU job and one on an activations file are run as asked."""
    if job.activations_file or job.gpu_ids or job.memory_check.startswith("forced") or not job.model_info:
        return
    from engine.devices import system_memory
    from engine.models.info import model_sizes
    from engine.models.resolve import load_config

    sizes = dict(hidden_dim=job.hidden_dim, batch_size=job.batch_size, max_sequence_length=job.max_sequence_length,
                 sae_batch_tokens=job.sae_batch_tokens, layer_number=job.layer_number)
    on_cuda = str(device).startswith("cuda")
    try:
        config = load_config(job_model(job), token=job_hub_token(job))
        described = modelcheck.DescribedModel(resolved=None, sizes=model_sizes(config),
                                              info=SimpleNamespace(parameter_count=job.model_info["parameter_count"]))
        needed = modelcheck.estimate(described, device_kind="cuda" if on_cuda else "cpu",
                                     quantization=job.quantization if on_cuda else None, **sizes)
    except (EngineError, KeyError):
        return  # the run itself says what is wrong with the model
    if on_cuda:
        import torch

        capacity, where = torch.cuda.mem_get_info(torch.device(device))[1], device
    else:
        capacity, where = system_memory()[0], "system RAM"
    if needed.total_bytes > capacity:
        raise ServiceError(modelcheck.memory_refusal(needed, capacity, where, sizes))
