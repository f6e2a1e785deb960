"""A transcoder's SAELens folder: SAELens' `transcoder` / `skip_transcoder` format (sae_lens/saes/
transcoder.py: d_out, no b_dec on the input, W_skip [d_out, d_in]) with the input and output hook
names, whose weights predict raw MLP outputs from raw MLP inputs as our SAE does."""
import json

import pytest
import torch
from safetensors.torch import load_file

from engine.sae.export_saelens import export_saelens
from engine.trainer import train_sae
from tests.engine.sae.test_transcoder_training import config, planted_pairs


@pytest.mark.parametrize("architecture", ["transcoder", "skip_transcoder"])
def test_the_saelens_folder_predicts_raw_targets_like_our_transcoder(architecture, tmp_path):
    x, y, _, _ = planted_pairs(n_tokens=1024, dense_width=0.5)
    result = train_sae(x, config(architecture=architecture, max_epochs=2), targets=y)
    folder = export_saelens(tmp_path / "tc", result.sae, result.scaling_factor, model_name="tiny",
                            hook_name="blocks.1.ln2.hook_normalized", hook_name_out="blocks.1.hook_mlp_out",
                            context_size=16, target_scaling_factor=result.target_scaling_factor)
    cfg = json.loads((folder / "cfg.json").read_text())
    assert (cfg["architecture"], cfg["d_in"], cfg["d_out"], cfg["k"]) == (architecture, 24, 20, 3)
    assert cfg["apply_b_dec_to_input"] is False
    assert (cfg["metadata"]["hook_name"], cfg["metadata"]["hook_name_out"]) == (
        "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out")
    w = load_file(str(folder / "sae_weights.safetensors"))
    assert ("W_skip" in w) == (architecture == "skip_transcoder")
    assert w["W_dec"].shape == (128, 20) and w["b_dec"].shape == (20,)

    # SAELens' transcoder forward on raw inputs, with the top k kept as cfg says.
    raw = torch.from_numpy(x[:100])
    pre = raw @ w["W_enc"] + w["b_enc"]
    values, indices = pre.topk(cfg["k"], dim=-1)
    predicted = torch.zeros_like(pre).scatter(-1, indices, values.relu()) @ w["W_dec"] + w["b_dec"]
    if "W_skip" in w:
        assert w["W_skip"].shape == (20, 24)
        predicted = predicted + raw @ w["W_skip"].T
    with torch.no_grad():
        ours = result.sae(raw * result.scaling_factor).output / result.target_scaling_factor
    torch.testing.assert_close(predicted, ours, atol=1e-4, rtol=1e-4)
