"""Memory estimates for one extraction + training job, computed from the model's real sizes.

Everything here is arithmetic on the model's sizes (engine.models.info.ModelSizes: plain numbers,
which the web process learns from a limited child) and its parameter count; no model is loaded and
no size is looked up by model name. The numbers are upper-bound-ish approximations meant for
choosing a batch size and a quantization, not for accounting to the byte.
"""

from dataclasses import asdict, dataclass

from engine.errors import EngineError
from engine.defaults import EVAL_DEFAULTS
from engine.models.info import ModelSizes

_GB = 1024**3
_QUANTIZATIONS = (None, "8bit", "4bit")  # least to most aggressive
# Full-precision weights above this share of memory leave too little for activations and the
# SAE, so a quantized load is suggested.
_WEIGHTS_SHARE_LIMIT = 0.6


@dataclass
class MemoryEstimate:
    weights_bytes: int
    forward_bytes: int
    sae_bytes: int
    total_bytes: int
    dtype: str
    quantization: str | None
    # The evaluation after training, beside the model (engine.evaluation.next_token): a batch's final hidden
    # states for its three variants and the logits budget. Training's SAE is gone by then, so the
    # total counts the larger of the two.
    evaluation_bytes: int = 0

    def to_gb(self, ndigits: int = 2) -> dict:
        """The same estimate with sizes in GiB, for showing to people."""
        data = asdict(self)
        for key in ("weights", "forward", "sae", "evaluation", "total"):
            data[f"{key}_gb"] = round(data.pop(f"{key}_bytes") / _GB, ndigits)
        return data


def estimate_memory(
    sizes: ModelSizes,
    *,
    parameter_count: int,
    device_kind: str,
    quantization: str | None,
    hidden_dim: int,
    batch_size: int,
    max_sequence_length: int,
    sae_batch_tokens: int,
    layer_number: int,
    cpu_bf16: bool = False,
    eval_logits_bytes: int = EVAL_DEFAULTS.logits_bytes,
) -> MemoryEstimate:
    """cpu_bf16: the CPU computes in bfloat16 (engine.devices.cpu_uses_bf16), so weights and
    activations take 2 bytes there too."""
    _check_choices(device_kind, quantization)
    if not 0 <= layer_number < sizes.num_layers:
        raise EngineError(f"Layer {layer_number} does not exist: the model has layers 0 to {sizes.num_layers - 1}")
    # Activations are computed in the load dtype: bf16 on CUDA (also the compute dtype of
    # bitsandbytes layers), fp32 or bf16 on the CPU.
    act_bytes = 4 if device_kind == "cpu" and not cpu_bf16 else 2
    d_model = sizes.hidden_size

    weights = _weights_bytes(sizes, parameter_count, act_bytes, quantization)
    forward = _forward_bytes(sizes, d_model, act_bytes, batch_size, max_sequence_length)
    sae = _sae_bytes(d_model, hidden_dim, sae_batch_tokens)
    evaluation = 3 * batch_size * max_sequence_length * d_model * act_bytes + eval_logits_bytes
    return MemoryEstimate(
        weights_bytes=weights,
        forward_bytes=forward,
        sae_bytes=sae,
        evaluation_bytes=evaluation,
        total_bytes=weights + forward + max(sae, evaluation),
        dtype="float32" if act_bytes == 4 else "bfloat16",
        quantization=quantization,
    )


def _weights_bytes(sizes: ModelSizes, parameter_count: int, act_bytes: int, quantization: str | None) -> int:
    if quantization is None:
        return parameter_count * act_bytes
    # bitsandbytes quantizes nn.Linear weights only (~1 byte/param for LLM.int8, ~0.5 for NF4,
    # ignoring the small per-block scales). The token embedding stays in bf16; norms and biases
    # also do, but they are a rounding error next to the embedding, so they are counted as linear.
    embedding = min(sizes.vocab_size * sizes.hidden_size, parameter_count)
    per_param = 1.0 if quantization == "8bit" else 0.5
    return int((parameter_count - embedding) * per_param + embedding * 2)


def _forward_bytes(sizes: ModelSizes, d_model: int, act_bytes: int, batch: int, seq: int) -> int:
    # Under inference_mode each block's intermediates are freed once the next block starts, and we
    # stop after the chosen layer, so the peak is one block's working set whatever the layer:
    # attention projections (~4 x hidden wide) plus the MLP's intermediate, plus the attention
    # score matrix (eager attention; fused kernels use less).
    intermediate = sizes.intermediate_size or 4 * d_model
    heads = sizes.num_attention_heads or max(1, d_model // 64)
    block = batch * seq * (4 * d_model + intermediate) * act_bytes
    scores = batch * heads * seq * seq * act_bytes
    captured = batch * seq * d_model * 4  # the layer's output, copied out as float32
    return block + scores + captured


def _sae_bytes(d_model: int, hidden_dim: int, sae_batch_tokens: int) -> int:
    params = 2 * d_model * hidden_dim + d_model + hidden_dim
    # fp32 weights, their gradients, and Adam's two moments.
    optimizer_state = params * 4 * 4
    # One minibatch: input, reconstruction and features, each with a gradient.
    batch = sae_batch_tokens * (d_model + 2 * hidden_dim) * 4 * 2
    return optimizer_state + batch


def suggest_settings(
    sizes: ModelSizes,
    *,
    parameter_count: int,
    available_bytes: int,
    device_kind: str,
    hidden_dim: int,
    max_sequence_length: int,
    sae_batch_tokens: int,
    layer_number: int,
    requested_batch_size: int,
    cpu_bf16: bool = False,
) -> dict:
    """The largest batch and least aggressive quantization that fit in available_bytes.

    Quantization is only offered on CUDA (bitsandbytes needs it). A quantization level is usable
    when its weights take at most 60% of the memory and the whole job fits at batch size 1; then
    the batch size grows in powers of two up to min(128, requested). When nothing fits, the
    sequence length is halved (down to 64) before giving up with fits=False.
    """
    _check_choices(device_kind, None)
    levels = _QUANTIZATIONS if device_kind == "cuda" else (None,)
    cap = max(1, min(128, requested_batch_size))
    batch_sizes = [2**i for i in range(cap.bit_length()) if 2**i <= cap][::-1]

    def estimate(quantization, batch, seq):
        return estimate_memory(
            sizes, parameter_count=parameter_count, device_kind=device_kind, quantization=quantization,
            hidden_dim=hidden_dim, batch_size=batch, max_sequence_length=seq,
            sae_batch_tokens=sae_batch_tokens, layer_number=layer_number, cpu_bf16=cpu_bf16,
        )

    seq = max_sequence_length
    while True:
        for quantization in levels:
            if estimate(quantization, 1, seq).weights_bytes > _WEIGHTS_SHARE_LIMIT * available_bytes:
                continue
            for batch in batch_sizes:
                total = estimate(quantization, batch, seq).total_bytes
                if total <= available_bytes:
                    return _settings(batch, seq, quantization, fits=True, total=total)
        if seq <= 64:
            break
        seq = max(64, seq // 2)
    worst = levels[-1]
    return _settings(1, seq, worst, fits=False, total=estimate(worst, 1, seq).total_bytes)


def _settings(batch: int, seq: int, quantization: str | None, *, fits: bool, total: int) -> dict:
    return {
        "batch_size": batch,
        "max_sequence_length": seq,
        "quantization": quantization,
        "enable_4bit": quantization == "4bit",
        "enable_8bit": quantization == "8bit",
        # We only run the language model forward under inference_mode and never backpropagate
        # through it, so activation checkpointing would save nothing.
        "enable_checkpointing": False,
        "fits": fits,
        "estimated_total_bytes": total,
    }


def _check_choices(device_kind: str, quantization: str | None) -> None:
    if device_kind not in ("cuda", "cpu"):
        raise EngineError(f"device_kind must be 'cuda' or 'cpu', not {device_kind!r}")
    if quantization not in _QUANTIZATIONS:
        raise EngineError(f"quantization must be None, '8bit' or '4bit', not {quantization!r}")
    if quantization is not None and device_kind != "cuda":
        raise EngineError("4-bit/8-bit loading needs a CUDA GPU: leave quantization off on CPU")
