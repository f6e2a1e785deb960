"""bfloat16 on the CPU (MISTUDIO_CPU_BF16): the model and the SAE's matmuls in bf16 give what
float32 gives, to bf16's precision."""
import numpy as np
import pytest
import torch

from engine.activations.extract import extract_activations
from engine.devices import cpu_has_fast_bf16, cpu_uses_bf16
from engine.errors import DeviceError, EngineError
from engine.models.loading import load_model
from engine.models.resolve import resolve_model
from engine.trainer import TrainConfig, train_sae
from tests.engine.trainer.test_sae_training import sparse_data


def test_the_policy_follows_the_setting_and_auto_follows_the_cpu():
    assert cpu_uses_bf16("on") is True and cpu_uses_bf16("off") is False
    flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    assert cpu_uses_bf16("auto") == cpu_has_fast_bf16() == ("amx_bf16" in flags)
    with pytest.raises(DeviceError, match="auto, on, off"):
        cpu_uses_bf16("yes")


@pytest.mark.slow
@pytest.mark.parametrize("model_dir", ["tiny_llama_dir", "minilm_dir"])
def test_bf16_extraction_matches_float32_to_bf16_precision(model_dir, request, sample_texts, tmp_path):
    resolved = resolve_model(str(request.getfixturevalue(model_dir)), models_dir=None)
    rows = {}
    for mode in ("off", "on"):
        loaded = load_model(resolved, device="cpu", cpu_bf16=mode)
        weights = {p.dtype for p in loaded.model.parameters()}
        assert weights == {torch.bfloat16 if mode == "on" else torch.float32}
        result = extract_activations(loaded, sample_texts, layer_number=1, batch_size=4, max_sequence_length=24,
                                     out_path=tmp_path / f"{mode}.npy")
        assert result.dtype == ("bfloat16" if mode == "on" else "float32")
        rows[mode] = np.load(result.path).astype(np.float32)
    assert rows["on"].shape == rows["off"].shape
    # bf16 keeps 8 significant bits: a few layers in, rows agree to a few percent of their norm.
    error = np.linalg.norm(rows["on"] - rows["off"], axis=1) / np.linalg.norm(rows["off"], axis=1)
    assert np.median(error) < 0.03 and error.max() < 0.1
    assert np.median(error) > 0  # they did compute differently


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["topk", "relu"])
def test_an_sae_trained_under_cpu_bf16_autocast_ends_within_2_percent_of_float32(architecture):
    data = sparse_data()
    results = {}
    for mode in ("off", "on"):
        config = TrainConfig(min_steps=0, hidden_dim=128, learning_rate=1e-3, sae_batch_tokens=256, max_epochs=6, min_loss=0,
                             architecture=architecture, k=3 if architecture == "topk" else None,
                             checkpoint_every_epochs=0, checkpoint_interval_s=1e9, cpu_bf16=mode)
        results[mode] = train_sae(data, config)
    assert results["on"].compute_dtype == "bfloat16" and results["off"].compute_dtype == "float32"
    # Master weights stay float32 under autocast.
    assert {v.dtype for v in results["on"].sae.state_dict().values()} == {torch.float32}
    assert results["on"].final_loss == pytest.approx(results["off"].final_loss, rel=0.02)
    assert results["on"].final_loss != results["off"].final_loss


def test_a_bad_cpu_bf16_value_is_refused():
    with pytest.raises(EngineError, match="cpu_bf16 must be one of"):
        train_sae(np.ones((10, 4), dtype=np.float32), TrainConfig(min_steps=0, cpu_bf16="maybe"))
