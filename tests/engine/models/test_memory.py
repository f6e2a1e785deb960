import pytest
from transformers import LlamaConfig

from engine.errors import EngineError
from engine.models.memory import estimate_memory, suggest_settings
from engine.models.info import model_sizes

# Llama-3.2-1B-like sizes, but the parameter count is passed in as a number.
CONFIG = model_sizes(LlamaConfig(
    num_hidden_layers=16, hidden_size=2048, intermediate_size=8192, num_attention_heads=32,
    num_key_value_heads=8, vocab_size=128256,
))
PARAMS = 1_235_814_400


def estimate(**overrides):
    kwargs = dict(
        parameter_count=PARAMS, device_kind="cuda", quantization=None, hidden_dim=16384,
        batch_size=8, max_sequence_length=512, sae_batch_tokens=4096, layer_number=8,
    )
    kwargs.update(overrides)
    return estimate_memory(CONFIG, **kwargs)


def test_the_estimate_grows_with_batch_size_and_sae_width():
    assert estimate(batch_size=16).forward_bytes > estimate(batch_size=8).forward_bytes
    assert estimate(hidden_dim=32768).sae_bytes > estimate(hidden_dim=16384).sae_bytes
    base = estimate()
    assert base.total_bytes == base.weights_bytes + base.forward_bytes + base.sae_bytes


def test_weights_are_bf16_on_cuda_and_fp32_on_cpu():
    assert estimate().weights_bytes == 2 * PARAMS
    assert estimate(device_kind="cpu").weights_bytes == 4 * PARAMS


def test_quantization_shrinks_the_weights_in_order():
    full, int8, nf4 = (estimate(quantization=q).weights_bytes for q in (None, "8bit", "4bit"))
    assert nf4 < int8 < full
    # The embedding stays in bf16, so 4-bit is more than an eighth of fp32.
    assert nf4 > PARAMS * 0.5


def test_the_sae_term_counts_adam_state_and_one_batch():
    d, h, tokens = 2048, 16384, 4096
    params = 2 * d * h + d + h
    assert estimate(hidden_dim=h, sae_batch_tokens=tokens).sae_bytes == params * 16 + tokens * (d + 2 * h) * 8


def test_quantization_on_cpu_is_refused():
    with pytest.raises(EngineError, match="needs a CUDA GPU"):
        estimate(device_kind="cpu", quantization="4bit")


def suggest(available_gb, device_kind="cuda", requested=64):
    return suggest_settings(
        CONFIG, parameter_count=PARAMS, available_bytes=int(available_gb * 1024**3), device_kind=device_kind,
        hidden_dim=16384, max_sequence_length=512, sae_batch_tokens=4096, layer_number=8,
        requested_batch_size=requested,
    )


def test_plenty_of_memory_keeps_full_precision_and_the_requested_batch():
    settings = suggest(80)
    assert settings["quantization"] is None and settings["enable_4bit"] is False
    assert settings["batch_size"] == 64
    assert settings["enable_checkpointing"] is False


def test_little_memory_suggests_the_least_aggressive_quantization_that_fits():
    tight = suggest(4)
    assert tight["quantization"] in ("8bit", "4bit")
    assert tight["enable_4bit"] == (tight["quantization"] == "4bit")
    assert tight["fits"] is True
    assert suggest(3.2)["quantization"] == "4bit"


def test_the_batch_size_is_a_power_of_two_at_most_the_request():
    settings = suggest(6, requested=100)
    assert settings["batch_size"] & (settings["batch_size"] - 1) == 0
    assert settings["batch_size"] <= 64


def test_cpu_never_suggests_quantization():
    settings = suggest(4, device_kind="cpu")
    assert settings["quantization"] is None and settings["enable_8bit"] is False


def test_a_cpu_computing_in_bf16_needs_half_the_bytes_for_weights_and_activations():
    fp32 = estimate(device_kind="cpu", quantization=None)
    bf16 = estimate(device_kind="cpu", quantization=None, cpu_bf16=True)
    assert bf16.dtype == "bfloat16" and fp32.dtype == "float32"
    assert bf16.weights_bytes * 2 == fp32.weights_bytes
    assert bf16.sae_bytes == fp32.sae_bytes  # the SAE keeps float32 master weights
