"""A Matryoshka BatchTopK run cancelled mid-epoch and resumed from its checkpoint ends exactly where
an uninterrupted run does: its prefixes, threshold and dead-feature counters come back with it."""
import numpy as np
import torch

from engine.trainer import TrainConfig, train_sae
from tests.engine.trainer.test_sae_training import sparse_data


def config() -> TrainConfig:
    return TrainConfig(min_steps=0, cpu_bf16="off", architecture="matryoshka_batchtopk", k=3, hidden_dim=64, matryoshka_widths=[8, 24],
                       learning_rate=1e-2, sae_batch_tokens=256, max_epochs=3, min_loss=0.0, checkpoint_every_epochs=1,
                       checkpoint_interval_s=1e9, progress_interval_s=0.0, stop_check_interval_s=0.0)


def test_resuming_a_cancelled_matryoshka_run_matches_an_uninterrupted_one(tmp_path):
    data = sparse_data(n_tokens=1024)
    uninterrupted = train_sae(data, config())
    calls = []
    cancelled = train_sae(data, config(), checkpoint_dir=tmp_path,
                          should_stop=lambda: calls.append(1) or len(calls) > 5)
    assert cancelled.stopped_reason == "cancelled"
    saved = torch.load(cancelled.checkpoints[-1].path, weights_only=True)
    assert saved["sae"]["matryoshka_widths"].tolist() == [8, 24, 64] and saved["epoch_step"] > 0
    resumed = train_sae(data, config(), resume_from=cancelled.checkpoints[-1].path)
    np.testing.assert_allclose(resumed.loss_history, uninterrupted.loss_history, rtol=1e-5)
    np.testing.assert_array_equal(resumed.tokens_since_fired, uninterrupted.tokens_since_fired)
    torch.testing.assert_close(resumed.sae.threshold, uninterrupted.sae.threshold)
    torch.testing.assert_close(resumed.sae.W_dec, uninterrupted.sae.W_dec)
