import numpy as np
import pytest
import torch

from engine.evaluation.reconstruction import evaluate_sae
from engine.sae.export import export_state_dict
from engine.sae import SparseAutoencoder, build_sae, sae_from_state_dict
from engine.trainer import TrainConfig, train_sae
from tests.engine.evaluation.test_feature_statistics import hand_made_sae
from tests.engine.trainer.test_sae_training import sparse_data


def test_a_perfect_reconstruction_explains_all_variance():
    sae = SparseAutoencoder(d_in=3, d_sae=4)
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_dec.zero_()
        for i in range(3):
            sae.W_enc[i, i] = sae.W_dec[i, i] = 1.0
    x = np.array([[1, 0, 0], [0, 2, 0], [3, 0, 1], [1, 1, 1]], dtype=np.float32)
    metrics = evaluate_sae(sae, x, scaling_factor=2.0, batch_tokens=3)
    assert metrics["explained_variance"] == pytest.approx(1.0)
    assert metrics["mse"] == pytest.approx(0.0)
    assert metrics["cosine_similarity"] == pytest.approx(1.0)
    assert metrics["l0"] == pytest.approx(7 / 4)
    assert metrics["dead_features"] == 1 and metrics["eval_tokens"] == 4
    assert metrics["dense_features"] == 3
    hist = metrics["density_histogram"]
    assert sum(hist["counts"]) == 3 and hist["never_fired"] == 1
    assert len(hist["bin_edges"]) == len(hist["counts"]) + 1


def test_dead_features_come_from_training_counters_when_given():
    x = np.array([[1, 0, 0], [1, 2, 0]], dtype=np.float32)
    metrics = evaluate_sae(hand_made_sae(), x, scaling_factor=1.0, dead_counts=np.array([0, 10, 500, 900]),
                           dead_window_tokens=500)
    assert metrics["dead_features"] == 2 and metrics["dead_window_tokens"] == 500


def test_metrics_on_held_out_rows_match_the_exported_sae_in_raw_space():
    data = sparse_data(n_tokens=2000)
    result = train_sae(data, TrainConfig(min_steps=0, cpu_bf16="off", hidden_dim=64, architecture="topk", k=3, learning_rate=1e-2,
                                         sae_batch_tokens=256, max_epochs=5, min_loss=0.0))
    start, stop = result.heldout_rows
    held_out = data[start:stop]
    scaled = evaluate_sae(result.sae, held_out, scaling_factor=result.scaling_factor,
                          dead_counts=result.tokens_since_fired, dead_window_tokens=result.dead_window_tokens)
    exported = sae_from_state_dict(export_state_dict(result.sae, result.scaling_factor), architecture="topk", k=3)
    raw = evaluate_sae(exported, held_out, scaling_factor=1.0)
    for key in ("l0", "explained_variance", "mse", "cosine_similarity"):
        assert scaled[key] == pytest.approx(raw[key], rel=1e-4)
    assert 0.5 < scaled["explained_variance"] <= 1.0


def test_evaluating_a_float32_cache_read_from_disk_warns_of_nothing(tmp_path):
    import warnings

    from engine.evaluation.stats import feature_statistics

    path = tmp_path / "acts.npy"
    np.save(path, np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32))
    cache = np.load(path, mmap_mode="r")  # read-only slices, as a job's cache is read
    sae = build_sae("relu", 8, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "The given NumPy array is not writable" fails the test
        evaluation = evaluate_sae(sae, cache, scaling_factor=1.0, device="cpu", batch_tokens=64)
        stats = feature_statistics(sae, cache, scaling_factor=1.0, device="cpu", batch_tokens=64)
    assert evaluation["eval_tokens"] == 300 and stats["total_features"] == 16
