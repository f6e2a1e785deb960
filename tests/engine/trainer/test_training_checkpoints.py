import math

import numpy as np
import pytest
import torch

from engine.trainer import TrainConfig, train_sae


def data():
    return np.random.default_rng(1).normal(size=(1000, 16)).astype(np.float32)


def config(**overrides) -> TrainConfig:
    values = dict(min_steps=0, cpu_bf16="off", hidden_dim=64, learning_rate=1e-3, sae_batch_tokens=128, max_epochs=4, min_loss=0.0,
                  checkpoint_every_epochs=2, checkpoint_interval_s=1e9, progress_interval_s=0.0,
                  stop_check_interval_s=0.0)
    values.update(overrides)
    return TrainConfig(**values)


def stop_after(n_calls):
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > n_calls

    return should_stop


def test_cancelling_returns_cancelled_and_writes_a_safe_checkpoint(tmp_path):
    seen = []
    result = train_sae(data(), config(), checkpoint_dir=tmp_path, checkpoint_prefix="job7",
                       should_stop=stop_after(10), on_checkpoint=seen.append)
    assert result.stopped_reason == "cancelled"
    assert result.total_epochs == 1  # 8 steps per epoch, stopped before the 11th
    assert seen == result.checkpoints and seen[-1].path == tmp_path / "job7_checkpoint_1_step_10.pt"
    saved = torch.load(seen[-1].path, weights_only=True)
    assert saved["step"] == 10 and saved["epoch"] == 1 and saved["epoch_step"] == 2
    assert set(saved["sae"]) == {"W_enc", "b_enc", "W_dec", "b_dec"}
    assert saved["scaling_factor"] == result.scaling_factor
    assert saved["config"]["hidden_dim"] == 64


def test_checkpoints_are_written_every_n_epochs(tmp_path):
    result = train_sae(data(), config(), checkpoint_dir=tmp_path)
    assert [(c.epoch, c.path.name) for c in result.checkpoints] == [(2, "sae_checkpoint_2.pt"), (4, "sae_checkpoint_4.pt")]
    assert not list(tmp_path.glob("*.partial"))


def test_resuming_a_cancelled_run_matches_an_uninterrupted_one(tmp_path):
    uninterrupted = train_sae(data(), config())
    cancelled = train_sae(data(), config(), checkpoint_dir=tmp_path, should_stop=stop_after(13))
    resumed = train_sae(data(), config(), resume_from=cancelled.checkpoints[-1].path)

    assert resumed.stopped_reason == "max_epochs" and resumed.total_epochs == 4
    np.testing.assert_allclose(resumed.loss_history, uninterrupted.loss_history, rtol=1e-6)
    for name, value in uninterrupted.sae.state_dict().items():
        torch.testing.assert_close(resumed.sae.state_dict()[name], value)


def test_resuming_from_an_end_of_epoch_checkpoint_matches_an_uninterrupted_one(tmp_path):
    # What a killed worker leaves: the newest checkpoint is the one written at an epoch's end, and
    # the next epoch's order must be the one the uninterrupted run drew.
    uninterrupted = train_sae(data(), config(max_epochs=6))
    interrupted = train_sae(data(), config(max_epochs=6), checkpoint_dir=tmp_path)
    at_epoch_2 = next(c for c in interrupted.checkpoints if c.epoch == 2)
    resumed = train_sae(data(), config(max_epochs=6), resume_from=at_epoch_2.path)

    assert resumed.total_epochs == 6
    np.testing.assert_allclose(resumed.loss_history, uninterrupted.loss_history, rtol=1e-6)
    for name, value in uninterrupted.sae.state_dict().items():
        torch.testing.assert_close(resumed.sae.state_dict()[name], value)


def test_a_checkpoint_keeps_its_batch_and_penalty_weight_across_a_change_of_rules(tmp_path):
    # A job checkpointed by a version with other rules (before min_update_travel, and when
    # sparsity_coeff was the per-element weight; no batch_tokens/sparsity_weight keys) and resumed
    # after an upgrade ends as it would have: the same batch, the same penalty.
    legacy = config(architecture="relu", sparsity_coeff=0.05, learning_rate=1e-4, min_steps=40, max_epochs=4,
                    sparsity_warmup_fraction=0)
    cancelled = train_sae(data(), legacy, checkpoint_dir=tmp_path, should_stop=stop_after(30))
    assert cancelled.sae_batch_tokens == 64  # today's rules: 0.5 / 1e-4 steps -> the 64-token floor
    path = cancelled.checkpoints[-1].path
    saved = torch.load(path, weights_only=True)
    assert saved["batch_tokens"] == 64 and saved["sparsity_weight"] == pytest.approx(0.05 * 2000 / math.sqrt(384 * 16))
    # As that version wrote it: format 1 (no format_version), epoch sums as a list.
    del saved["format_version"], saved["batch_tokens"], saved["sparsity_weight"]
    saved["epoch_step"] = 0  # written at an epoch's end, as a killed worker's newest checkpoint is
    saved["epoch_sums"] = [0.0, 0.0, 0.0, 0]
    torch.save(saved, path)

    reports = []
    resumed = train_sae(data(), legacy, resume_from=path, on_progress=reports.append)
    # The old rule: 950 rows over 4 epochs, 10 steps an epoch -> 95 tokens a step.
    assert resumed.sae_batch_tokens == 95
    assert reports and all(r.l1 > 0 and r.loss == pytest.approx(r.mse + 0.05 * r.l1, rel=1e-5) for r in reports)
    # Resumed with the keys, a checkpoint of today's rules keeps today's batch.
    again = train_sae(data(), legacy, checkpoint_dir=tmp_path / "new", should_stop=stop_after(30))
    assert train_sae(data(), legacy, resume_from=again.checkpoints[-1].path).sae_batch_tokens == 64
