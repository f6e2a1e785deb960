import math

import numpy as np
import pytest
import torch

from engine.activations.extract import extract_activations
from engine.errors import EngineError
from engine.models.loading import load_model
from engine.models.resolve import resolve_model
from engine.trainer import TrainConfig, train_sae


def sparse_data(n_tokens=4096, d_in=32, n_true=64, active=3, seed=0):
    """Tokens built from a few of many ground-truth directions: what an SAE should recover."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(n_true, d_in)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    codes = np.zeros((n_tokens, n_true), dtype=np.float32)
    for row in codes:
        row[rng.choice(n_true, size=active, replace=False)] = rng.uniform(1, 5, size=active)
    return codes @ directions * 7.0  # an arbitrary scale the trainer must normalise away


# sparsity_coeff 1.6e-5 at d_in 32 is a per-element weight of 2.9e-4 for the L1, 8.3e-5 for JumpReLU's L0
# (engine.sae.registry.Architecture.sparsity_weight).
def config(**overrides) -> TrainConfig:
    values = dict(min_steps=0, cpu_bf16="off", hidden_dim=128, sparsity_coeff=1.6e-5, learning_rate=1e-3, sae_batch_tokens=512, max_epochs=8,
                  min_loss=0.0, checkpoint_every_epochs=0, checkpoint_interval_s=1e9, progress_interval_s=0.0)
    values.update(overrides)
    return TrainConfig(**values)


def test_loss_decreases_on_synthetic_sparse_data():
    data = sparse_data()
    result = train_sae(data, config())
    assert result.stopped_reason == "max_epochs"
    assert result.total_epochs == len(result.loss_history) == 8
    assert result.loss_history[-1] < 0.5 * result.loss_history[0]
    assert result.final_loss == result.loss_history[-1]
    assert 1 <= result.convergence_epoch <= 8
    # After scaling, the mean distance from the data's mean is sqrt(d_in) (the sample is all 4096 rows here).
    scaled = data * result.scaling_factor
    scaled_norm = np.linalg.norm(scaled - scaled.mean(axis=0), axis=1).mean()
    assert scaled_norm == pytest.approx(math.sqrt(32), rel=1e-3)


def test_loss_decreases_on_real_model_activations(minilm_dir, sample_texts, tmp_path):
    loaded = load_model(resolve_model(str(minilm_dir), models_dir=None), device="cpu")
    extracted = extract_activations(loaded, sample_texts, layer_number=3, batch_size=16, max_sequence_length=32,
                                    out_path=tmp_path / "acts.npy")
    activations = np.load(extracted.path, mmap_mode="r")
    result = train_sae(activations, config(hidden_dim=512, sae_batch_tokens=128, max_epochs=4))
    assert result.loss_history[-1] < result.loss_history[0]
    assert all(math.isfinite(loss) for loss in result.loss_history)


def test_training_is_reproducible_from_the_seed():
    data = sparse_data(n_tokens=1024)
    first = train_sae(data, config(max_epochs=2))
    assert train_sae(data, config(max_epochs=2)).loss_history == first.loss_history
    # A tensor input gives the same batches; rows within a batch come in another order, so only
    # float summation order differs.
    from_tensor = train_sae(torch.from_numpy(data), config(max_epochs=2))
    np.testing.assert_allclose(from_tensor.loss_history, first.loss_history, rtol=1e-5)


def test_progress_reports_move_forward_and_end_at_the_last_step():
    reports = []
    train_sae(sparse_data(n_tokens=1024), config(max_epochs=3), on_progress=reports.append)
    steps = [r.step for r in reports]
    assert steps == sorted(steps) and reports[-1].step == reports[-1].total_steps == 6
    assert reports[-1].progress == 1.0
    assert reports[0].epoch == 1 and reports[-1].epoch == 3


def test_progress_is_throttled():
    reports = []
    train_sae(sparse_data(n_tokens=1024), config(max_epochs=3, progress_interval_s=3600), on_progress=reports.append)
    assert len(reports) == 1  # only the final one


def test_it_stops_early_once_an_epoch_is_below_min_loss():
    result = train_sae(sparse_data(n_tokens=1024), config(max_epochs=50, min_loss=1e9))
    assert result.stopped_reason == "min_loss"
    assert result.total_epochs == 1


def test_bad_settings_say_what_to_fix():
    with pytest.raises(EngineError, match="hidden_dim must be at least 1; learning_rate must be positive"):
        train_sae(sparse_data(n_tokens=64), config(hidden_dim=0, learning_rate=0))


def test_min_steps_shrinks_the_batch_of_a_small_run_and_leaves_a_large_one_alone():
    import numpy as np

    from engine.trainer import TrainConfig, train_sae

    x = np.random.default_rng(0).normal(size=(2100, 8)).astype(np.float32)
    # At learning rate 0.1 the travel rule asks for only 0.5 / 0.1 = 5 steps: min_steps decides.
    small = train_sae(x, TrainConfig(cpu_bf16="off", hidden_dim=16, max_epochs=2, min_loss=0, sae_batch_tokens=4096, min_steps=40,
                                     learning_rate=0.1))
    # 1995 training rows, 20 steps an epoch -> 99 tokens a step.
    assert small.sae_batch_tokens == 1995 // 20
    # At 0.01 it asks for 50 steps, more than min_steps: 25 an epoch -> 79 tokens a step.
    slower = train_sae(x, TrainConfig(cpu_bf16="off", hidden_dim=16, max_epochs=2, min_loss=0, sae_batch_tokens=4096, min_steps=40,
                                      learning_rate=0.01))
    assert slower.sae_batch_tokens == 1995 // 25
    off = train_sae(x, TrainConfig(min_steps=0, cpu_bf16="off", hidden_dim=16, max_epochs=2, min_loss=0, sae_batch_tokens=512))
    assert off.sae_batch_tokens == 512
    floor = train_sae(x, TrainConfig(cpu_bf16="off", hidden_dim=16, max_epochs=1, min_loss=0, sae_batch_tokens=512, min_steps=10_000))
    assert floor.sae_batch_tokens == 64


def test_the_step_floor_follows_the_learning_rate_only_while_min_steps_is_on():
    from engine.trainer import TrainConfig, min_steps_for

    assert min_steps_for(TrainConfig(cpu_bf16="off", min_steps=1000)) == 5000  # the seed's 1e-4: 0.5 / 1e-4
    assert min_steps_for(TrainConfig(cpu_bf16="off", min_steps=1000, learning_rate=1e-3)) == 1000
    assert min_steps_for(TrainConfig(cpu_bf16="off", min_steps=1000, learning_rate=1e-5)) == 50_000
    assert min_steps_for(TrainConfig(cpu_bf16="off", min_steps=0)) == 0  # off: batches as asked


# The weight of the penalty beside a per-element MSE: lambda / d_in, where lambda = 2000 x coeff at
# width 384 and grows as sqrt(d_in / 384) for the L1 and as d_in / 384 for JumpReLU's L0.
EXPECTED_WEIGHT = {"relu": lambda coeff, d_in: 2000 * coeff * math.sqrt(d_in / 384) / d_in,
                   "jumprelu": lambda coeff, d_in: 2000 * coeff / 384}


@pytest.mark.parametrize("architecture,d_in", [("relu", 32), ("relu", 96), ("relu", 384), ("jumprelu", 32), ("jumprelu", 96)])
def test_the_loss_is_the_mse_plus_the_width_scaled_lambda_over_d_in_times_the_penalty(architecture, d_in):
    """sparsity_coeff means λ / 2000 in the summed-squared-error loss at width 384, λ scaled with
    the width (docs/architectures.md); the trainer reports that loss divided by d_in (docs/training.md,
    "The SAE"), so each step's loss = MSE + (λ / d_in) × penalty."""
    reports = []
    coeff = 0.003
    train_sae(sparse_data(n_tokens=600, d_in=d_in),
              config(architecture=architecture, sparsity_coeff=coeff, sparsity_warmup_fraction=0, max_epochs=1,
                     sae_batch_tokens=128, eval_fraction=0.0),
              on_progress=reports.append)
    assert len(reports) >= 4  # one a step (progress_interval_s 0)
    weight = EXPECTED_WEIGHT[architecture](coeff, d_in)
    for report in reports:
        assert report.l1 > 0
        assert report.loss == pytest.approx(report.mse + weight * report.l1, rel=1e-5)
