"""The MLP's input (mlp_in) and output (mlp_out) of one layer, read in one forward, are what each
single-site extraction reads; and the CE splice of a transcoder that predicts the MLP's output
from its input exactly (the MLP itself) gives the clean loss."""
import copy

import numpy as np
import pytest

from engine.activations.extract import extract_activations, extract_sites
from engine.evaluation.next_token import ce_loss_evaluation
from engine.models.loading import load_model
from engine.models.resolve import resolve_model

MAX_LEN, LAYER = 20, 1


def load(model_dir, **kwargs):
    return load_model(resolve_model(str(model_dir), models_dir=None), device="cpu", **kwargs)


@pytest.mark.parametrize("model", ["tiny_llama_dir", "tiny_gpt2_dir"])
def test_both_sites_in_one_forward_equal_the_single_site_extractions(model, request, sample_texts, tmp_path):
    loaded = load(request.getfixturevalue(model))
    options = dict(batch_size=4, max_sequence_length=MAX_LEN, prepend_bos=False, exclude_special_tokens=False)
    both = extract_sites(loaded, sample_texts[:10], sites={(LAYER, "mlp_in"): tmp_path / "in.npy",
                                                           (LAYER, "mlp_out"): tmp_path / "out.npy"}, **options)
    assert both.forward_batches == 3  # 10 texts in batches of 4: each batch once, for both sites
    for point in ("mlp_in", "mlp_out"):
        alone = extract_activations(loaded, sample_texts[:10], layer_number=LAYER, hook_point=point,
                                    out_path=tmp_path / f"{point}_alone.npy", **options)
        np.testing.assert_array_equal(np.load(both.results[(LAYER, point)].path), np.load(alone.path))
    assert not np.allclose(np.load(tmp_path / "in.npy"), np.load(tmp_path / "out.npy"))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny_llama_dir", "tiny_gpt2_dir"])
def test_the_mlp_itself_as_a_transcoder_recovers_the_clean_loss(model, request, sample_texts):
    loaded = load(request.getfixturevalue(model), with_lm_head=True)
    # A copy of the MLP (without the splice's hooks, which would call it again) as the transcoder.
    mlp = copy.deepcopy(next(m for name, m in loaded.blocks[LAYER].named_children() if name == "mlp"))
    result = ce_loss_evaluation(loaded, sample_texts[:12], layer_number=LAYER, reconstruct=mlp,
                                max_sequence_length=MAX_LEN, batch_size=4, hook_point="mlp_out", read_point="mlp_in")
    assert result["ce_loss_with_sae"] == pytest.approx(result["ce_loss_clean"], rel=1e-6)
    assert abs(result["ce_loss_zero_ablation"] - result["ce_loss_clean"]) > 1e-5
    assert result["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-3)
    # Reading the MLP's input matters: the MLP applied to its own output is not the clean model.
    wrong = ce_loss_evaluation(loaded, sample_texts[:12], layer_number=LAYER, reconstruct=mlp,
                               max_sequence_length=MAX_LEN, batch_size=4, hook_point="mlp_out")
    assert abs(wrong["ce_loss_with_sae"] - result["ce_loss_clean"]) > 1e-5
