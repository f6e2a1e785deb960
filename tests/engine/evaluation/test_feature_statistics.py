import numpy as np
import pytest
import torch

from engine.sae import SparseAutoencoder
from engine.evaluation.stats import feature_statistics


def hand_made_sae():
    """Feature i reads input dimension i; feature 3 has a bias so negative it never fires."""
    sae = SparseAutoencoder(d_in=3, d_sae=4)
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[0, 0] = sae.W_enc[1, 1] = sae.W_enc[2, 2] = 1.0
        sae.b_enc.copy_(torch.tensor([0.0, 0.0, 0.0, -100.0]))
    return sae


def test_it_counts_dead_features_and_sparsity():
    activations = np.array([[1, 0, 0], [1, 2, 0], [0, 0, 0], [4, 0, 0]], dtype=np.float16)
    stats = feature_statistics(hand_made_sae(), activations, scaling_factor=1.0, batch_tokens=3)
    assert stats["total_features"] == 4
    assert stats["active_features"] == 2  # features 0 and 1; feature 2's input is always 0
    assert stats["dead_features"] == 2
    assert stats["l0"] == pytest.approx(4 / 4)  # 1 + 2 + 0 + 1 active over 4 tokens
    assert stats["sparsity_achieved"] == pytest.approx(4 / 16)
    assert stats["mean_activation"] == pytest.approx((1 + 1 + 2 + 4) / 16)
    assert all(type(v) in (int, float) for v in stats.values())


def test_the_scaling_factor_is_applied_before_encoding():
    activations = torch.tensor([[1.0, 0, 0], [2.0, 0, 0]])
    stats = feature_statistics(hand_made_sae(), activations, scaling_factor=10.0)
    assert stats["mean_activation"] == pytest.approx((10 + 20) / 8)


def test_the_feature_analysis_gives_the_same_statistics():
    from engine.evaluation.features import analyze_features
    from engine.evaluation.stats import statistics_from_analysis

    activations = np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32) * 3
    separate = feature_statistics(hand_made_sae(), activations, scaling_factor=0.5, batch_tokens=64)
    analysis = analyze_features(hand_made_sae(), 0.5, activations, chunk_rows=64)
    ours = statistics_from_analysis(analysis)
    assert {k: ours[k] for k in ("total_features", "active_features", "dead_features")} == {
        k: separate[k] for k in ("total_features", "active_features", "dead_features")}
    for key in ("mean_activation", "sparsity_achieved", "l0"):
        assert ours[key] == pytest.approx(separate[key], rel=1e-6), key
    assert all(type(v) in (int, float) for v in ours.values())
