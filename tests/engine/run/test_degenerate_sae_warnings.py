"""A run that completes with a useless SAE says so (engine.run.verdict): each warning names what is
wrong and what to change, in the config's own fields; a usable SAE has none."""
import numpy as np
import torch

from engine.evaluation.reconstruction import evaluate_sae
from engine.run import verdict
from engine.sae import build_sae
from engine.trainer import TrainConfig
from tests.engine.trainer.test_sae_training import sparse_data


def silent_sae(d_in=32, d_sae=64):
    sae = build_sae("relu", d_in, d_sae)
    sae.initialize_(torch.randn(100, d_in))
    with torch.no_grad():
        sae.b_enc.fill_(-1e4)  # no pre-activation reaches 0: every feature is silent
    return sae


def test_an_sae_whose_features_never_fire_is_warned_about_with_the_fix():
    evaluation = evaluate_sae(silent_sae(), sparse_data(n_tokens=256), scaling_factor=1.0)
    found = verdict.warnings(evaluation, TrainConfig(min_steps=0, cpu_bf16="off", hidden_dim=64, sparsity_coeff=0.001))
    assert found[0] == "L0 is 0.00: every feature is silent; lower sparsity_coeff (now 0.001) or ask for target_l0."
    assert any(w.startswith("Explained variance is") for w in found)
    assert any(w.startswith("64 of 64 features are dead") for w in found)


def test_the_fix_names_k_for_topk_and_target_l0_when_it_was_asked_for():
    evaluation = evaluate_sae(silent_sae(), sparse_data(n_tokens=256), scaling_factor=1.0)
    assert "raise k (now 4)" in verdict.warnings(evaluation, TrainConfig(min_steps=0, cpu_bf16="off", hidden_dim=64, architecture="topk", k=4))[0]
    asked = TrainConfig(min_steps=0, cpu_bf16="off", hidden_dim=64, architecture="jumprelu", target_l0=0.5)
    assert "raise target_l0 (now 0.5)" in verdict.warnings(evaluation, asked)[0]


def test_a_dense_code_is_warned_about():
    sae = silent_sae()
    with torch.no_grad():
        sae.b_enc.fill_(1e4)  # every feature fires on every token
    evaluation = evaluate_sae(sae, sparse_data(n_tokens=256), scaling_factor=1.0)
    found = verdict.warnings(evaluation, TrainConfig(min_steps=0, cpu_bf16="off", hidden_dim=64))
    assert found[0] == "L0 is 64 of 64 features: the code is not sparse; raise sparsity_coeff (now 0.001) or ask for target_l0."
    assert "64 of 64 features fire on more than 10% of tokens" in " ".join(found)


def test_an_sae_that_is_the_data_s_own_dictionary_has_no_warnings():
    d_in = 32
    sae = build_sae("relu", d_in, 2 * d_in)
    with torch.no_grad():
        eye = torch.eye(d_in)
        sae.W_dec.copy_(torch.cat([eye, -eye]))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(512, d_in)) * (rng.random((512, d_in)) < 0.1)).astype(np.float32)
    evaluation = evaluate_sae(sae, x, scaling_factor=1.0)
    assert evaluation["explained_variance"] > 0.99
    assert verdict.warnings(evaluation, TrainConfig(min_steps=0, cpu_bf16="off", hidden_dim=2 * d_in)) == []
