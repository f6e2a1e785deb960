"""training_tokens: the SAE trains on exactly that many tokens, part-way through an epoch or over
several; max_epochs still caps the passes; the step floor shrinks batches, never adds tokens."""
import numpy as np

from engine.trainer import TrainConfig, train_sae
from engine.trainer.checkpoint import load


def rows(n=1000, d=16, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def config(**overrides):
    values = dict(min_steps=0, cpu_bf16="off", architecture="topk", k=4, hidden_dim=32, learning_rate=1e-3, sae_batch_tokens=128, max_epochs=10,
                  min_loss=0.0, checkpoint_every_epochs=0, checkpoint_interval_s=1e9, progress_interval_s=0.0,
                  eval_fraction=0.0)
    values.update(overrides)
    return TrainConfig(**values)


def test_the_budget_stops_part_way_through_the_first_epoch(tmp_path):
    reports = []
    result = train_sae(rows(), config(training_tokens=300), on_progress=reports.append, checkpoint_dir=tmp_path)
    assert result.tokens_trained == 300 and result.stopped_reason == "training_tokens"
    assert result.total_epochs == 1 and reports[-1].tokens_done == reports[-1].total_tokens == 300
    assert reports[-1].progress == 1.0
    # The run ends with a checkpoint that knows the tokens it trained on.
    assert load(result.checkpoints[-1].path).payload["tokens_trained"] == 300


def test_the_budget_runs_over_several_epochs_and_ends_inside_one():
    result = train_sae(rows(), config(training_tokens=2500))
    assert result.tokens_trained == 2500 and result.total_epochs == 3 and result.stopped_reason == "training_tokens"


def test_max_epochs_caps_the_passes_before_a_larger_budget():
    result = train_sae(rows(), config(training_tokens=10_000, max_epochs=2))
    assert result.tokens_trained == 2000 and result.stopped_reason == "max_epochs"


def test_the_step_floor_shrinks_batches_within_the_budget_and_adds_no_tokens():
    result = train_sae(rows(), config(training_tokens=1280, sae_batch_tokens=1024, min_steps=10, min_update_travel=0.0))
    assert result.sae_batch_tokens == 128 and result.tokens_trained == 1280


def test_progress_and_eta_follow_tokens():
    reports = []
    train_sae(rows(), config(training_tokens=700), on_progress=reports.append)
    assert [r.tokens_done for r in reports[:3]] == [128, 256, 384]
    assert reports[1].progress == 256 / 700
