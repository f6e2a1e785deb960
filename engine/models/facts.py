"""What the web process may know of a model, learnt in a limited child process.

A model's config.json, its safetensors headers, its GGUF header and its tokenizer files come from
whoever published it. The web process downloads what it must (engine.models.resolve fetches config.json)
and parses none of it: `model_facts` and `corpus_bytes_per_token` run in a child started by
mistudio.sandbox.run_limited, under an address-space, a CPU-time and a wall-clock limit, and answer
plain JSON. The model is described without building it at its size: the parameters come from its
files' metadata (engine.models.parameter_count), the hook points from a copy of one layer and one expert.

The child's environment holds nothing of the parent's but what `hub_settings` hands over (where
the hub is and its cache): the user's token travels in the arguments, never in the environment.
"""
import hashlib
import os
import sys
from pathlib import Path

# What identifies a local model folder's files without parsing them: each file's name and size,
# and its head (a safetensors file's header, a config's whole text up to this).
_IDENTITY_HEAD_BYTES = 64 * 1024
_IDENTITY_MAX_FILES = 4096


def hub_settings(*, timeout_s: float) -> dict:
    """Where huggingface_hub in this process finds the hub and its cache, for a child to use."""
    from huggingface_hub import constants

    return {"endpoint": constants.ENDPOINT, "cache": str(constants.HF_HUB_CACHE),
            "offline": bool(constants.is_offline_mode()), "timeout_s": timeout_s}


def model_identity(resolved) -> str | None:
    """A key that changes when the model's files do: a hub model's commit, a GGUF's size, head and
    tail (engine.models.gguf.gguf_identity), a folder's file names, sizes and heads. None where there is
    none to trust (a hub model whose commit the hub did not name)."""
    if resolved.source == "hub":
        return f"hub:{resolved.location}@{resolved.revision}" if resolved.revision else None
    if resolved.gguf_file is not None:
        from engine.models.gguf import gguf_identity

        return f"gguf:{gguf_identity(resolved.gguf_file)}"
    digest = hashlib.sha256()
    files = sorted(p for p in Path(resolved.location).iterdir() if p.is_file())[:_IDENTITY_MAX_FILES]
    for file in files:
        digest.update(f"{file.name}\0{file.stat().st_size}\0".encode())
        with open(file, "rb") as handle:
            digest.update(handle.read(_IDENTITY_HEAD_BYTES))
    return f"folder:{digest.hexdigest()}"


def model_facts(model: dict, *, token, hub: dict) -> dict:
    """The child's side: what the model in `model` (a ResolvedModel's fields) is, as JSON.

    Raises ModelResolutionError where the config cannot be read and EngineError (ConfigRefused)
    where its sizes are refused or transformers cannot build it."""
    _use_hub(hub)
    from engine.models.config_bounds import check_config
    from engine.models.hooks import available_hook_points_for_config
    from engine.models.info import is_causal_lm, model_sizes
    from engine.models.parameter_count import parameter_count
    from engine.models.resolve import ResolvedModel, load_config

    resolved = ResolvedModel(**model)
    config = load_config(resolved, token=token)
    # Again on what transformers made of it: a GGUF's config, sizes it derived.
    check_config(config.to_dict(), model_name=resolved.name)
    sizes = model_sizes(config)
    count, counted_from = parameter_count(resolved, config, token=token, hub_timeout_s=hub["timeout_s"])
    try:
        points, why_not = list(available_hook_points_for_config(config)), None
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for configs it cannot build
        points, why_not = None, f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
    return {
        "architecture": config.model_type,
        "sizes": sizes.to_dict(),
        "is_causal_lm": bool(is_causal_lm(config)),
        "parameter_count": int(count),
        "parameter_count_from": counted_from,
        "hook_points": points,
        "hook_points_unknown_because": why_not,
    }


def corpus_bytes_per_token(model: dict, texts: list[str], *, token, hub: dict, max_file_bytes: int,
                           converted_dir: str | None) -> float | None:
    """The child's side of a disk plan's estimate: UTF-8 bytes per token of `texts` under the
    model's tokenizer (engine.disk.bytes_per_token). A GGUF's tokenizer is read from the folder a
    worker converted it into when there is one (`converted_dir`), else from the file itself; a hub
    tokenizer's files' sizes are asked first, and the whole load is under the hub's timeout."""
    _use_hub(hub)
    from engine import disk
    from engine.models.loading import load_tokenizer
    from engine.models.resolve import ResolvedModel

    resolved = ResolvedModel(**model)
    if converted_dir is not None and Path(converted_dir).is_dir():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(converted_dir, trust_remote_code=False)
    else:
        tokenizer = load_tokenizer(resolved, token=token, hub_timeout_s=hub["timeout_s"], max_file_bytes=max_file_bytes)
    return disk.bytes_per_token(tokenizer, texts)


def _use_hub(hub: dict) -> None:
    """Point huggingface_hub (not imported yet in a fresh child) at the parent's hub and cache. It
    sends no token but the one passed (the child has no login of its own to send anyway). Called
    in a process that imported it already (a test, a notebook), it leaves that process's settings."""
    if "huggingface_hub" in sys.modules:
        return
    os.environ.update(HF_ENDPOINT=hub["endpoint"], HF_HUB_CACHE=hub["cache"], HF_HUB_DISABLE_IMPLICIT_TOKEN="1",
                      HF_HUB_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_VERBOSITY="error")
    if hub["offline"]:
        os.environ["HF_HUB_OFFLINE"] = "1"
