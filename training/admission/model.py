"""What the web process may know about a model and this machine before any training: the
model's facts (its sizes, parameter count and hook points, learnt in a limited child process from
its config and its files' metadata, never from its weights), memory estimates from real numbers,
and NVML's view of the GPUs. Nothing here parses a model's files or creates a CUDA context."""
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from engine.devices import cpu_uses_bf16, gpu_inventory, system_memory
from engine.errors import EngineError, ModelResolutionError
from mistudio.errors import ServiceError
from training.defaults import DEFAULTS
from training.hub import hub_token

GB = 1024**3
# Models whose facts this process keeps (a few hundred bytes each).
FACTS_CACHE_SIZE = 256


@dataclass
class DescribedModel:
    resolved: object
    info: object  # engine.models.info.ModelInfo
    sizes: object  # engine.models.info.ModelSizes, what the memory estimate reads
    hook_points: tuple[str, ...] | None = None  # None: the blocks could not be read to find them
    hook_points_unknown_because: str | None = None
    parameter_count_from: str = ""


def local_model_roots() -> list[Path]:
    return [settings.MODELS_DIR, *settings.EXTRA_LOCAL_MODEL_ROOTS]


def describe(model_name: str, *, token: str | None = None, any_local_path: bool = False) -> DescribedModel:
    """`any_local_path` is for someone at the machine's terminal; names from the network may only
    point into the configured model folders. `token`: the user's own (training.hub)."""
    from engine.models.resolve import resolve_model

    token = hub_token(token)
    try:
        resolved = resolve_model(
            model_name, models_dir=settings.MODELS_DIR, token=token, hub_timeout_s=settings.HUB_TIMEOUT_S,
            local_roots=None if any_local_path else local_model_roots(),
        )
    except ModelResolutionError as err:
        raise ServiceError(str(err), field="model_name") from None
    return describe_resolved(resolved, token=token)


def describe_resolved(resolved, *, token=None) -> DescribedModel:
    """A model already resolved (a job's, as checked when it was made: training.worker.spec.job_model),
    described without resolving its name again."""
    try:
        return _described(resolved, token=token)
    except ModelResolutionError as err:
        raise ServiceError(str(err), field="model_name") from None
    except EngineError as err:
        raise ServiceError(f"Model {resolved.name!r} could not be read: {err}", field="model_name") from None


def _described(resolved, *, token) -> DescribedModel:
    from engine.models.info import ModelInfo, ModelSizes

    facts = model_facts(resolved, token=token)
    sizes = ModelSizes(**facts["sizes"])
    info = ModelInfo(
        model_name=resolved.name, actual_model_loaded=resolved.location, architecture=facts["architecture"],
        total_layers=sizes.num_layers, selected_layer=None, hidden_size=sizes.hidden_size,
        vocab_size=sizes.vocab_size, requires_token=False, parameter_count=facts["parameter_count"],
        is_causal_lm=facts["is_causal_lm"],
    )
    points = facts["hook_points"]
    return DescribedModel(resolved=resolved, info=info, sizes=sizes,
                          hook_points=tuple(points) if points is not None else None,
                          hook_points_unknown_because=facts["hook_points_unknown_because"],
                          parameter_count_from=facts["parameter_count_from"])


_FACTS: OrderedDict = OrderedDict()
_FACTS_LOCK = threading.Lock()


def model_facts(resolved, *, token=None) -> dict:
    """engine.models.facts.model_facts of the model, answered by a limited child (mistudio.sandbox)
    once per model's files in this process: the child imports torch and transformers, seconds.
    Raises ModelResolutionError or EngineError as the child did, and keeps that answer too; a child
    a limit stopped is an EngineError that names the limit, and is asked again next time (a busy
    machine may have slowed it)."""
    from engine.models.facts import model_identity

    try:
        key = model_identity(resolved)
    except OSError as err:
        raise ModelResolutionError(f"Model '{resolved.name}' could not be read at {resolved.location}: {err}") from None
    with _FACTS_LOCK:
        answer = _FACTS.get(key) if key is not None else None
        if answer is not None:
            _FACTS.move_to_end(key)
    if answer is None:
        answer = _ask_child(resolved, token)
        if key is not None and answer.get("refused") != "SandboxRefused":
            with _FACTS_LOCK:
                _FACTS[key] = answer
                while len(_FACTS) > FACTS_CACHE_SIZE:
                    _FACTS.popitem(last=False)
    if "refused" in answer:
        error = ModelResolutionError if answer["refused"] == "ModelResolutionError" else EngineError
        raise error(answer["message"])
    return answer


def _ask_child(resolved, token) -> dict:
    from engine.models.facts import hub_settings
    from mistudio.sandbox import SandboxError, SandboxRefused, run_limited

    model = {"name": resolved.name, "location": resolved.location, "source": resolved.source,
             "revision": resolved.revision}
    try:
        return run_limited("engine.models.facts:model_facts", model, token=token,
                           hub=hub_settings(timeout_s=settings.HUB_TIMEOUT_S),
                           expected=("ModelResolutionError", "ConfigRefused", "EngineError"),
                           what=f"the model {resolved.name!r}")
    except SandboxError as err:
        return {"refused": err.kind, "message": str(err)}
    except SandboxRefused as err:
        return {"refused": "SandboxRefused", "message": str(err)}


def model_suggestions(limit: int = 50) -> list[str]:
    """Names a person may give as model_name without knowing a hub id: the models bundled with the
    package, then the models of the models folder (a Hugging Face folder or a GGUF, at `name` or at
    a hub id's `namespace/name`), as resolve_model finds them there."""
    from engine.models.gguf import find_gguf
    from engine.models.resolve import BUNDLED_CAUSAL_LM_NAME, BUNDLED_MODEL_NAME

    names = [BUNDLED_CAUSAL_LM_NAME, BUNDLED_MODEL_NAME]
    root = Path(settings.MODELS_DIR)

    def loadable(path: Path) -> bool:
        try:
            return (path / "config.json").is_file() or find_gguf(path) is not None
        except (EngineError, OSError):  # a folder of several GGUFs names none of them
            return False

    for top in sorted(root.iterdir()) if root.is_dir() else ():
        if loadable(top):
            names.append(top.name)
        elif top.is_dir():  # a hub id's namespace
            names.extend(f"{top.name}/{inner.name}" for inner in sorted(top.iterdir()) if loadable(inner))
    return names[:limit]


def check_gpu_request(gpu_id: int | None, quantization: str, *, gpu_ids: list[int] | None = None) -> None:
    from gpus.selectors import gpu_index_served, live_workers

    inventory = gpu_inventory()
    count = len(inventory.gpus)
    # MISTUDIO_DDP_ON_CPU: a machine without a GPU runs a gpu_ids job as that many CPU processes.
    missing = [i for i in gpu_ids or () if i >= count and not gpu_index_served(i)]
    if missing and not (count == 0 and settings.DDP_ON_CPU):
        if count == 0:
            raise ServiceError(
                f"gpu_ids {list(gpu_ids)} were requested but this server has no NVIDIA GPU: leave gpu_ids out to "
                "train on the CPU.", field="gpu_ids",
            )
        raise ServiceError(f"gpu_ids: GPU {missing[0]} does not exist: this server has {count} GPU(s), 0 to {count - 1}.",
                           field="gpu_ids")
    # On many hosts the web server may have no GPU: a GPU is real when a live worker serves it.
    if gpu_id is not None and gpu_id >= count and not gpu_index_served(gpu_id):
        if count == 0:
            raise ServiceError(
                f"gpu_id {gpu_id} was requested but this server has no NVIDIA GPU: leave gpu_id null to train on the CPU.",
                field="gpu_id",
            )
        raise ServiceError(f"gpu_id {gpu_id} does not exist: this server has {count} GPU(s), 0 to {count - 1}.",
                           field="gpu_id")
    if quantization not in ("", "none") and count == 0 and not live_workers().filter(gpu_index__isnull=False, fake=False).exists():
        raise ServiceError(
            f"quantization {quantization!r} needs a CUDA GPU (bitsandbytes) and this server has none: use 'none'.",
            field="quantization",
        )


def check_hook_point_name(hook_point: str) -> None:
    from engine.models.hooks import HOOK_POINTS

    if hook_point not in HOOK_POINTS:
        raise ServiceError(f"hook_point {hook_point!r} is not a hook point: choose one of {', '.join(HOOK_POINTS)}.",
                           field="hook_point")


def check_hook_point(described, hook_point: str, *, model_name: str) -> None:
    """A hook point the model has (engine.models.hooks, read by the child of model_facts from a copy of
    one layer built on the meta device). Every model has its blocks' input and output."""
    from engine.models.hooks import RESIDUAL_POINTS

    check_hook_point_name(hook_point)
    if hook_point in RESIDUAL_POINTS:
        return
    points = hook_points(described)
    if points is None:
        why = f" ({described.hook_points_unknown_because})" if described.hook_points_unknown_because else ""
        raise ServiceError(f"hook_point {hook_point!r}: the blocks of {model_name} could not be read to find it{why}; "
                           "use resid_post or resid_pre.", field="hook_point")
    if hook_point not in points:
        raise ServiceError(f"hook_point {hook_point!r}: {model_name} has no {hook_point} that can be found; "
                           f"its hook points are {', '.join(points)}.", field="hook_point")


def hook_points(described) -> tuple[str, ...] | None:
    """The model's hook points, or None when its architecture cannot be built to look."""
    return described.hook_points


def check_activations_file(path: str) -> None:
    from engine.activations.cache import load_activations

    try:
        load_activations(Path(path))
    except EngineError as err:
        raise ServiceError(str(err), field="activations_file") from None


def estimate(described, *, device_kind, quantization, hidden_dim, batch_size, max_sequence_length,
              sae_batch_tokens, layer_number):
    from engine.models.memory import estimate_memory

    return estimate_memory(
        described.sizes,
        parameter_count=described.info.parameter_count,
        device_kind=device_kind,
        quantization=None if quantization in (None, "", "none") else quantization,
        hidden_dim=hidden_dim,
        batch_size=batch_size,
        max_sequence_length=max_sequence_length,
        sae_batch_tokens=sae_batch_tokens,
        layer_number=layer_number,
        cpu_bf16=_cpu_bf16(),
        eval_logits_bytes=settings.EVAL_LOGITS_BYTES,
    )


def _cpu_bf16() -> bool:
    """The worker's CPU precision, judged on this host (the same machine in the embedded setup)."""
    return cpu_uses_bf16(settings.CPU_BF16)


def memory_verdict(described, *, quantization, gpu_id, force: bool = False, alongside=(), **sizes) -> str:
    """'passed'; a warning with the numbers when the job fits the device but not what is free on it
    now (a queued job waits for the device: what runs there now ends); a ServiceError saying what
    it needs, what the device has and what to lower when it cannot fit the device at all, unless
    `force` (staff): then the verdict says it was forced. `alongside`: the (hidden_dim,
    sae_batch_tokens) of other SAEs training at the same time beside the same model (a streaming
    sweep's members), whose training memory counts too."""
    from gpus.selectors import live_workers

    inventory = gpu_inventory()
    local = {g.index: g for g in inventory.gpus}
    # GPUs of other hosts: their registered total memory (free memory is only known there).
    remote = [w for w in live_workers().filter(gpu_index__isnull=False, fake=False, memory_total__isnull=False)
              if gpu_id is None or w.gpu_index == gpu_id]
    if inventory.gpus and (gpu_id is None or gpu_id in local):
        gpu = local[gpu_id] if gpu_id is not None else max(inventory.gpus, key=lambda g: g.memory_free)
        capacity, free, where = gpu.memory_total, gpu.memory_free, f"GPU {gpu.index}"
        needed = _together(described, alongside, device_kind="cuda", quantization=quantization, **sizes)
    elif remote:
        worker = max(remote, key=lambda w: w.memory_total)
        capacity, free = worker.memory_total, None
        where = f"GPU {worker.gpu_index} of {worker.host}"
        needed = _together(described, alongside, device_kind="cuda", quantization=quantization, **sizes)
    elif gpu_id is not None:
        return f"not checked: GPU {gpu_id} is on another host whose worker reported no memory size"
    else:
        capacity, free = system_memory()
        where = "system RAM (no GPU)"
        needed = _together(described, alongside, device_kind="cpu", quantization=None, **sizes)
    if needed.total_bytes > capacity:
        if force:
            return (f"forced: needs about {needed.total_bytes / GB:.1f} GB, more than the {capacity / GB:.1f} GB "
                    f"of {where}")[:500]
        raise ServiceError(memory_refusal(needed, capacity, where, sizes))
    if free is not None and needed.total_bytes > free:
        return (f"warning: needs about {needed.total_bytes / GB:.1f} GB, {free / GB:.1f} GB free on {where} now; "
                "lower batch_size or max_sequence_length, or use quantization '4bit'")
    return "passed"


def _together(described, alongside, **sizes):
    """estimate(), the SAEs of `alongside` training beside this one."""
    from dataclasses import replace

    needed = estimate(described, **sizes)
    if not alongside:
        return needed
    others = sum(estimate(described, **{**sizes, "hidden_dim": hidden_dim, "sae_batch_tokens": batch}).sae_bytes
                 for hidden_dim, batch in alongside)
    sae = needed.sae_bytes + others
    return replace(needed, sae_bytes=sae, total_bytes=needed.weights_bytes + needed.forward_bytes +
                   max(sae, needed.evaluation_bytes))


def memory_refusal(needed, capacity: int, where: str, sizes: dict) -> str:
    """What a job that cannot fit its device needs, what the device has, and what to lower: the
    sizes that make the largest share of the estimate first."""
    shares = sorted([
        (needed.sae_bytes, "the SAE", f"hidden_dim (now {sizes['hidden_dim']}) or sae_batch_tokens "
                                      f"(now {sizes['sae_batch_tokens']})"),
        (needed.forward_bytes, "the model's forward pass", f"batch_size (now {sizes['batch_size']}) or "
                                                           f"max_sequence_length (now {sizes['max_sequence_length']})"),
        (needed.weights_bytes, "the model's weights", "the weights' size: quantization '4bit' on a GPU"),
        (needed.evaluation_bytes, "the evaluation's logits and hidden states",
         f"MISTUDIO_EVAL_LOGITS_BYTES (now {settings.EVAL_LOGITS_BYTES:,}) or batch_size (now {sizes['batch_size']})"),
    ], key=lambda share: share[0], reverse=True)
    parts = ", ".join(f"{name} {size / GB:.1f} GB" for size, name, _ in shares)
    return (f"This job needs about {needed.total_bytes / GB:.1f} GB of memory ({parts}) but {where} has "
            f"{capacity / GB:.1f} GB in all: lower {shares[0][2]}, or {shares[1][2]}. Staff may create it anyway "
            "with force: true.")


def memory_report(described, *, batch_size, hidden_dim, max_sequence_length, sae_batch_tokens,
                  layer_number, quantization) -> dict:
    """The check-memory document: requirement, suggestions, and a verdict per GPU."""
    from engine.models.memory import suggest_settings

    inventory = gpu_inventory()
    info = described.info
    sizes = dict(
        hidden_dim=hidden_dim,
        max_sequence_length=max_sequence_length,
        sae_batch_tokens=sae_batch_tokens,
        layer_number=layer_number,
    )
    device_kind = "cuda" if inventory.gpus else "cpu"
    requested = estimate(described, device_kind=device_kind,
                          quantization=quantization if device_kind == "cuda" else None,
                          batch_size=batch_size, **sizes)
    smallest = estimate(described, device_kind=device_kind,
                         quantization="4bit" if device_kind == "cuda" else None, batch_size=1, **sizes)
    if inventory.gpus:
        available = max(g.memory_free for g in inventory.gpus)
        where = "the GPU with the most free memory"
    else:
        available = system_memory()[1]
        where = "system RAM: no NVIDIA GPU was found, so this estimate is for training on the CPU"
    suggestions = suggest_settings(
        described.sizes,
        parameter_count=info.parameter_count,
        available_bytes=available,
        device_kind=device_kind,
        requested_batch_size=batch_size,
        cpu_bf16=_cpu_bf16(),
        **sizes,
    )
    return {
        "model_name": info.model_name,
        "device": device_kind,
        "memory_check": _memory_check(requested, smallest, available, where, suggestions,
                                      parameter_count=info.parameter_count),
        "optimization_suggestions": {
            "batch_size": suggestions["batch_size"],
            "max_sequence_length": suggestions["max_sequence_length"],
            "enable_4bit": bool(suggestions.get("enable_4bit")),
            "enable_checkpointing": bool(suggestions.get("enable_checkpointing")),
            "quantization": suggestions.get("quantization") or "none",
        },
        "gpu_compatibility": _gpu_compatibility(inventory.gpus, requested, smallest, available),
        "parameter_count": info.parameter_count,
    }


def _gpu_compatibility(gpus, requested, smallest, available) -> dict:
    compatibility = {}
    for gpu in gpus:
        sufficient = requested.total_bytes <= gpu.memory_free
        compatibility[f"gpu_{gpu.index}"] = {
            "compatible": smallest.total_bytes <= gpu.memory_total,
            "memory_sufficient": sufficient,
            "recommended": sufficient and gpu.memory_free == available,
        }
    return compatibility


def _memory_check(requested, smallest, available, where, suggestions, *, parameter_count) -> dict:
    return {
        "sufficient": requested.total_bytes <= available,
        "required_gb": round(requested.total_bytes / GB, 2),
        "available_gb": round(available / GB, 2),
        "available_on": where,
        "breakdown_gb": {
            "model_weights": round(requested.weights_bytes / GB, 3),
            "forward_pass": round(requested.forward_bytes / GB, 3),
            "sae_training": round(requested.sae_bytes / GB, 3),
        },
        "recommendations": {
            "min_gpu_memory_gb": round(smallest.total_bytes / GB, 2),
            # 20% headroom over the estimate for the allocator and CUDA context.
            "recommended_gpu_memory_gb": round(requested.total_bytes * 1.2 / GB, 2),
            # "Large" follows the seed's own best practices: 7B+ parameters.
            "is_large_model": parameter_count >= 7_000_000_000,
            "use_4bit_quantization": bool(suggestions.get("enable_4bit")),
            "use_gradient_checkpointing": bool(suggestions.get("enable_checkpointing")),
        },
    }


def validation_report(*, model_name: str, huggingface_token: str | None = None) -> dict:
    """validate-model: a verdict, not an error, when the model cannot be used."""
    from engine.models.resolve import resolve_model

    token = hub_token(huggingface_token)
    try:
        resolved = resolve_model(
            model_name, models_dir=settings.MODELS_DIR, token=token,
            hub_timeout_s=settings.HUB_TIMEOUT_S, local_roots=local_model_roots(),
        )
        described = _described(resolved, token=token)
    except ModelResolutionError as err:
        return {
            "model_name": model_name, "valid": False, "accessible": False,
            "requires_token": bool(getattr(err, "requires_token", False)), "message": str(err),
            "model_info": None, "memory_requirements": None,
        }
    except EngineError as err:
        return {
            "model_name": model_name, "valid": False, "accessible": True, "requires_token": False,
            "message": f"The model was found but could not be read: {err}",
            "model_info": None, "memory_requirements": None,
        }
    info = described.info
    report = memory_report(
        described, batch_size=DEFAULTS.batch_size, hidden_dim=DEFAULTS.hidden_dim,
        max_sequence_length=DEFAULTS.max_sequence_length, sae_batch_tokens=DEFAULTS.sae_batch_tokens,
        layer_number=info.total_layers // 2, quantization=DEFAULTS.quantization,
    )
    recommendations = report["memory_check"]["recommendations"]
    return {
        "model_name": model_name,
        "valid": True,
        "accessible": True,
        "requires_token": info.requires_token,
        "message": f"{model_name} resolves to {info.actual_model_loaded} ({resolved.source})",
        "model_info": {
            "architecture": info.architecture,
            "total_layers": info.total_layers,
            "hidden_size": info.hidden_size,
            "vocab_size": info.vocab_size,
            "parameter_count": info.parameter_count,
            # The safetensors headers, a GGUF's tensor table, the hub's metadata, or an extrapolation.
            "parameter_count_from": described.parameter_count_from,
            "is_causal_lm": info.is_causal_lm,
            "source": resolved.source,
            # What a job's hook_point may be (engine.models.hooks); null when the blocks cannot be read.
            "hook_points": list(points) if (points := hook_points(described)) is not None else None,
        },
        "memory_requirements": {
            "minimum_gb": recommendations["min_gpu_memory_gb"],
            "recommended_gb": recommendations["recommended_gpu_memory_gb"],
            "estimated_for": f"default training settings (batch_size {DEFAULTS.batch_size}, hidden_dim "
                             f"{DEFAULTS.hidden_dim}, max_sequence_length {DEFAULTS.max_sequence_length}, middle layer)",
        },
    }
