"""A transcoder's whole run on a tiny random causal LM: both sites cached from the same forwards,
trained on the pairs, scored on the MLP's output (FVU and next-token loss with the MLP's output
replaced), exported with both hook names."""
import json

import numpy as np
import pytest
import torch

from engine.errors import EngineError
from engine.run import RunPaths, RunSpec, run
from engine.sae import sae_from_state_dict
from tests.engine.run.test_run import config, corpus  # noqa: F401 (a fixture)


def transcoder_spec(folder, model_dir, corpus, **overrides) -> RunSpec:  # noqa: F811
    values = dict(cpu_bf16="off", paths=RunPaths.in_folder(folder), model=str(model_dir), corpus=corpus, layer_number=1,
                  max_sequence_length=16, batch_size=8, hook_point="mlp_out",
                  config=config(architecture="skip_transcoder", k=4, max_epochs=3))
    values.update(overrides)
    return RunSpec(**values)


@pytest.mark.slow
def test_a_skip_transcoder_run_caches_both_sites_and_scores_the_mlp_output(tmp_path, tiny_llama_dir, corpus):  # noqa: F811
    outcome = run(transcoder_spec(tmp_path / "out", tiny_llama_dir, corpus))
    paths = outcome.paths
    inputs, targets = np.load(paths.activations), np.load(paths.targets)
    assert inputs.shape == targets.shape and not np.allclose(inputs, targets)
    evaluation = outcome.evaluation
    assert np.isfinite(evaluation["explained_variance"]) and evaluation["l0"] <= 4
    assert evaluation["ce_loss_clean"] is not None and evaluation["ce_loss_zero_ablation"] != evaluation["ce_loss_clean"]
    cfg = json.loads((paths.saelens_dir / "cfg.json").read_text())
    assert cfg["architecture"] == "skip_transcoder" and cfg["apply_b_dec_to_input"] is False
    assert cfg["metadata"]["hook_name"] == "blocks.1.ln2.hook_normalized"
    assert cfg["metadata"]["hook_name_out"] == "blocks.1.hook_mlp_out"
    assert cfg["d_out"] == targets.shape[1]
    # The saved model predicts raw MLP outputs from raw MLP inputs, as the evaluation measured.
    saved = sae_from_state_dict(torch.load(paths.model, weights_only=True), k=4)
    start = outcome.result.heldout_rows[0]
    with torch.no_grad():
        predicted = saved(torch.from_numpy(inputs[start:].astype(np.float32))).output.double().numpy()
    truth = targets[start:].astype(np.float64)
    fvu = ((truth - predicted) ** 2).sum() / ((truth - truth.mean(axis=0)) ** 2).sum()
    assert 1 - fvu == pytest.approx(evaluation["explained_variance"], abs=1e-3)


@pytest.mark.slow
def test_a_transcoder_must_predict_the_mlp_output_from_a_cache(tmp_path, tiny_llama_dir, corpus):  # noqa: F811
    with pytest.raises(EngineError, match="hook_point must be mlp_out"):
        run(transcoder_spec(tmp_path / "a", tiny_llama_dir, corpus, hook_point="resid_post"))
    with pytest.raises(EngineError, match="transcoders need a cache"):
        run(transcoder_spec(tmp_path / "b", tiny_llama_dir, corpus, cache_activations="never"))
