import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.sae.export_saelens import export_saelens
from engine.trainer import TrainConfig, train_sae
from tests.engine.trainer.test_sae_training import sparse_data


def saelens_encode(folder, x):
    """SAELens' encoders, re-implemented from the exported folder only."""
    cfg = json.loads((folder / "cfg.json").read_text())
    w = load_file(str(folder / "sae_weights.safetensors"))
    if cfg["architecture"] == "gated":
        centred = x - w["b_dec"]
        magnitude = centred @ (w["W_enc"] * w["r_mag"].exp()) + w["b_mag"]
        return (centred @ w["W_enc"] + w["b_gate"] > 0).float() * torch.relu(magnitude)
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    if cfg["architecture"] == "standard":
        return torch.relu(pre)
    if cfg["architecture"] == "topk":
        values, indices = pre.topk(cfg["k"], dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))
    assert cfg["architecture"] == "jumprelu"
    return torch.relu(pre) * (pre > w["threshold"])


@pytest.mark.parametrize("architecture,saelens_name", [
    ("relu", "standard"), ("topk", "topk"), ("batchtopk", "jumprelu"), ("jumprelu", "jumprelu"),
    ("matryoshka_batchtopk", "jumprelu"),
    ("gated", "gated"),
])
def test_the_saelens_folder_encodes_raw_activations_like_our_sae(architecture, saelens_name, tmp_path):
    data = sparse_data(n_tokens=1024)
    k = 3 if architecture in ("topk", "batchtopk", "matryoshka_batchtopk") else None
    result = train_sae(data, TrainConfig(min_steps=0, cpu_bf16="off", hidden_dim=64, architecture=architecture, k=k, learning_rate=1e-2,
                                         sae_batch_tokens=256, max_epochs=3, min_loss=0.0))
    density = np.linspace(0, 0.5, 64)
    folder = export_saelens(tmp_path / "sae", result.sae, result.scaling_factor, model_name="gpt2",
                            hook_name="blocks.3.hook_resid_post", context_size=128, feature_density=density)
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == saelens_name and cfg["d_in"] == 32 and cfg["d_sae"] == 64
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert cfg["metadata"]["sae_lens_version"] == "6.0.0" and cfg["metadata"]["hook_name"] == "blocks.3.hook_resid_post"
    assert ("k" in cfg) == (saelens_name == "topk")
    biases = {"b_enc", "b_gate"} & set(load_file(str(folder / "sae_weights.safetensors")))
    assert biases == ({"b_gate"} if saelens_name == "gated" else {"b_enc"})  # SAELens loads strictly
    sparsity = load_file(str(folder / "sparsity.safetensors"))["sparsity"]
    assert sparsity.shape == (64,) and sparsity[-1].item() == pytest.approx(np.log10(0.5))

    raw = torch.from_numpy(sparse_data(n_tokens=200, seed=3))
    with torch.no_grad():
        ours = result.sae.encode(raw * result.scaling_factor)
    torch.testing.assert_close(saelens_encode(folder, raw), ours, atol=1e-5, rtol=1e-5)
