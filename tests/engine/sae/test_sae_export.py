import json

import numpy as np
import pytest
import torch

from engine.sae.export import export_state_dict, save_sae, write_metadata
from engine.errors import EngineError
from engine.sae import SparseAutoencoder, sae_from_state_dict
from engine.trainer import TrainConfig, train_sae


def trained():
    data = np.random.default_rng(0).normal(loc=3.0, scale=5.0, size=(512, 16)).astype(np.float32)
    config = TrainConfig(min_steps=0, cpu_bf16="off", hidden_dim=48, learning_rate=1e-3, sae_batch_tokens=128, max_epochs=2, min_loss=0.0)
    return train_sae(data, config), torch.from_numpy(data)


def test_the_exported_sae_runs_on_raw_activations():
    result, raw = trained()
    s = result.scaling_factor
    folded = SparseAutoencoder.from_state_dict(export_state_dict(result.sae, s))
    with torch.no_grad():
        scaled, on_raw = result.sae(raw * s), folded(raw)
    recon_scaled, f_scaled, recon_raw, f_raw = scaled.output, scaled.codes, on_raw.output, on_raw.codes
    torch.testing.assert_close(f_raw, f_scaled, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(recon_raw, recon_scaled / s, rtol=1e-5, atol=1e-5)


def test_saved_saes_load_with_weights_only(tmp_path):
    result, _ = trained()
    save_sae(tmp_path / "sae.pt", result.sae, result.scaling_factor)
    state = torch.load(tmp_path / "sae.pt", weights_only=True)
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "W_enc": (16, 48), "b_enc": (48,), "W_dec": (48, 16), "b_dec": (16,),
    }


def test_metadata_is_indented_json(tmp_path):
    write_metadata(tmp_path / "meta.json", {"layer": 3, "model": "gpt2"})
    text = (tmp_path / "meta.json").read_text()
    assert json.loads(text) == {"layer": 3, "model": "gpt2"}
    assert '\n  "layer": 3' in text


@pytest.mark.parametrize("architecture", ["batchtopk", "matryoshka_batchtopk"])
def test_an_exported_batchtopk_file_loads_in_our_loader_and_encodes_raw_activations_alike(architecture, tmp_path):
    # The export writes the threshold per feature (SAELens' jumprelu shape); the module keeps one number.
    data = np.random.default_rng(0).normal(loc=3.0, scale=5.0, size=(512, 16)).astype(np.float32)
    config = TrainConfig(min_steps=0, cpu_bf16="off", architecture=architecture, k=4, hidden_dim=48, learning_rate=1e-3, sae_batch_tokens=128,
                         max_epochs=2, min_loss=0.0)
    result = train_sae(data, config)
    save_sae(tmp_path / "sae.pt", result.sae, result.scaling_factor)
    state = torch.load(tmp_path / "sae.pt", weights_only=True)
    assert state["threshold"].shape == (48,)
    loaded = sae_from_state_dict(state, k=4).eval()
    raw = torch.from_numpy(data[:64])
    with torch.no_grad():
        f_loaded = loaded.encode(raw)
        f_trained = result.sae.eval().encode(raw * result.scaling_factor)
    assert loaded.architecture == "batchtopk"  # outside training a Matryoshka BatchTopK is one
    torch.testing.assert_close(f_loaded, f_trained, rtol=1e-5, atol=1e-5)


def test_a_threshold_that_differs_between_features_is_no_batchtopk():
    state = {"W_enc": torch.zeros(4, 3), "b_enc": torch.zeros(3), "W_dec": torch.zeros(3, 4), "b_dec": torch.zeros(4),
             "threshold": torch.tensor([0.1, 0.2, 0.3])}
    with pytest.raises(EngineError, match="jumprelu"):
        sae_from_state_dict(state, k=1)
