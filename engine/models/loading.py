"""Loading a model and its tokenizer onto one device: the base transformer, or for causal LMs
(when asked) the model with its LM head so that evaluation can measure next-token loss. A GGUF
model loads from its conversion in `models_cache_dir` (engine.models.gguf.converted_folder), made by the
first load that needs it."""

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import DeviceError, EngineError, ModelResolutionError
from engine.models.info import num_layers
from engine.models.resolve import HubToken, ResolvedModel, StillWaiting, within_timeout

# Attribute names transformer stacks use: Llama/Mistral "layers", BERT "layer", GPT-2 "h",
# MPT/others "blocks".
_BLOCK_NAMES = ("layers", "layer", "h", "blocks")


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    config: Any
    blocks: Any  # torch.nn.ModuleList of transformer blocks
    device: str
    dtype: Any  # torch.dtype
    quantization: str | None


def load_model(
    resolved: ResolvedModel,
    *,
    device: str,
    quantization: str | None = None,
    token: HubToken = None,
    with_lm_head: bool = False,
    cpu_bf16: str = "off",
    models_cache_dir: Path | None = None,
) -> LoadedModel:
    """cpu_bf16 ("auto", "on", "off"; engine.devices.cpu_uses_bf16) picks bfloat16 or float32
    weights on the CPU; a GPU always gets bf16 (fp16 where the card lacks bf16).
    models_cache_dir: where a GGUF model is converted once and loaded from; without one it is
    dequantized from the GGUF on every load. A hub model is read at the commit it resolved to
    (resolved.revision); `token` is huggingface_hub's (engine.models.resolve)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    from engine.models.info import is_causal_lm

    if quantization not in (None, "8bit", "4bit"):
        raise EngineError(f"quantization must be None, '8bit' or '4bit', not {quantization!r}")
    on_cuda = device.startswith("cuda")
    if quantization and not on_cuda:
        raise DeviceError("4-bit/8-bit loading needs a CUDA GPU; this job runs on the CPU, so turn quantization off")
    if quantization and importlib.util.find_spec("bitsandbytes") is None:
        # A GPU extra (requirements-gpu.txt): without it transformers would fail deep in from_pretrained.
        raise DeviceError("4-bit/8-bit loading needs bitsandbytes, which this worker does not have: install the GPU "
                          "extras (make install GPU=1, or pip install -r requirements-gpu.txt), or turn quantization off")
    dtype = _load_dtype(device, cpu_bf16)

    kwargs: dict = {"dtype": dtype, "token": token}
    if quantization:
        kwargs["quantization_config"] = _bitsandbytes_config(quantization, dtype)
        # bitsandbytes places weights while quantizing them; they cannot be moved afterwards.
        kwargs["device_map"] = {"": device}
    try:
        location, extra = _weights_location(resolved, models_cache_dir)
        auto = AutoModel
        if with_lm_head and is_causal_lm(AutoConfig.from_pretrained(location, token=token, **extra,
                                                                    trust_remote_code=False)):
            auto = AutoModelForCausalLM
        model = auto.from_pretrained(location, **kwargs, **extra, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(location, token=token, **extra, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - safetensors, tokenizers and torch each raise their own types
        if type(exc).__name__ == "OutOfMemoryError":
            raise
        raise ModelResolutionError(
            f"Could not load model '{resolved.name}' from {resolved.location}: {_first_line(exc)}. "
            "Check that the folder holds the weights and tokenizer files, or that your token has access."
        ) from exc
    if not quantization:
        model.to(device)
    model.eval()
    model.requires_grad_(False)

    if tokenizer.pad_token is None:
        # We pad ourselves and mask the padding out, so any existing token will do.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if tokenizer.pad_token is None:
            raise ModelResolutionError(f"Tokenizer of '{resolved.name}' has no pad, eos or unk token to pad batches with")

    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        config=model.config,
        blocks=find_blocks(model, model.config),
        device=device,
        dtype=dtype,
        quantization=quantization,
    )


# The files a tokenizer may read from a repository (transformers' names for them).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "spiece.model",
                   "sentencepiece.bpe.model", "chat_template.jinja", "*.tiktoken")


def load_tokenizer(resolved: ResolvedModel, *, token: HubToken = None, models_cache_dir: Path | None = None,
                   hub_timeout_s: float | None = None, max_file_bytes: int | None = None):
    """The model's tokenizer alone (a feature analysis run without the model). For a hub model,
    `max_file_bytes` refuses one whose tokenizer files are larger, asked of the hub before any is
    downloaded, and `hub_timeout_s` bounds the whole load (an EngineError past either)."""
    from transformers import AutoTokenizer

    location, extra = _weights_location(resolved, models_cache_dir)

    def load():
        if max_file_bytes is not None and resolved.source == "hub":
            _check_hub_tokenizer_sizes(resolved, token, max_file_bytes, hub_timeout_s)
        return AutoTokenizer.from_pretrained(location, token=token, **extra, trust_remote_code=False)

    if resolved.source != "hub" or hub_timeout_s is None:
        return load()
    try:
        return within_timeout(load, hub_timeout_s, name=f"hub-tokenizer-{resolved.name}")
    except StillWaiting:
        raise EngineError(f"The tokenizer of '{resolved.name}': no answer from the hub within {hub_timeout_s:g} s") from None


def _check_hub_tokenizer_sizes(resolved: ResolvedModel, token: HubToken, max_file_bytes: int, timeout_s) -> None:
    import fnmatch

    from huggingface_hub import HfApi

    info = HfApi().model_info(resolved.location, revision=resolved.revision, files_metadata=True, token=token,
                              timeout=timeout_s)
    for sibling in info.siblings or ():
        name = sibling.rfilename
        if "/" in name or not any(fnmatch.fnmatch(name, pattern) for pattern in TOKENIZER_FILES):
            continue
        if sibling.size is not None and sibling.size > max_file_bytes:
            raise EngineError(f"The tokenizer file {name} of '{resolved.name}' is {sibling.size:,} bytes on the hub, "
                              f"more than this server downloads ({max_file_bytes:,}; MISTUDIO_TOKENIZER_MAX_BYTES)")


def _weights_location(resolved: ResolvedModel, models_cache_dir: Path | None) -> tuple[str, dict]:
    """Where from_pretrained reads the model, and what else it is told: a hub model's commit, a
    GGUF's converted folder, or the GGUF itself (its folder and `gguf_file`) when there is no cache
    to convert into."""
    gguf = resolved.gguf_file
    if gguf is None:
        return resolved.location, {"revision": resolved.revision} if resolved.revision else {}
    if models_cache_dir is None:
        return str(gguf.parent), {"gguf_file": gguf.name}
    from engine.models.gguf import converted_folder

    return str(converted_folder(gguf, Path(models_cache_dir))), {}


def _load_dtype(device: str, cpu_bf16: str = "off"):
    import torch

    from engine.devices import cpu_uses_bf16

    if not device.startswith("cuda"):
        # float16 on a CPU is slow and not supported by every kernel; bf16 only where it is fast.
        return torch.bfloat16 if cpu_uses_bf16(cpu_bf16) else torch.float32
    with torch.cuda.device(torch.device(device)):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _bitsandbytes_config(quantization: str, dtype):
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)


def find_blocks(model, config):
    import torch.nn as nn

    expected = num_layers(config)
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == expected
    ]
    if not candidates:
        raise EngineError(
            f"Could not find the {expected} transformer blocks of {type(model).__name__}: unsupported architecture"
        )
    preferred = [c for c in candidates if c[0].rsplit(".", 1)[-1] in _BLOCK_NAMES]
    return (preferred or candidates)[0][1]


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__
