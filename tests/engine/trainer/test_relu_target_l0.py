"""relu with target_l0: the trainer steers the L1 weight until L0 sits at the target
(engine.trainer.target_l0), from a sparsity_coeff far too weak or far too strong, and a run resumed
from a checkpoint continues the controller exactly."""
import numpy as np
import pytest
import torch

from engine.trainer import TrainConfig, train_sae
from tests.engine.sae.test_sae_architectures import l0_of
from tests.engine.trainer.test_sae_training import sparse_data


def config(**overrides) -> TrainConfig:
    values = dict(min_steps=0, cpu_bf16="off", hidden_dim=128, architecture="relu", learning_rate=1e-3, sae_batch_tokens=256, max_epochs=25,
                  min_loss=0.0, checkpoint_every_epochs=0, checkpoint_interval_s=1e9, progress_interval_s=0.0,
                  stop_check_interval_s=0.0)
    values.update(overrides)
    return TrainConfig(**values)


# 1e-2 silences nearly every feature (L0 1.3 without the target). Before the encoder biases had a
# rate of their own (engine.sae.registry.BIAS_TRAVEL) the controller could not bring L0 back up from
# there in 400 steps (it ended at 0.7): the biases moved too slowly for its weight to matter.
@pytest.mark.slow
@pytest.mark.parametrize("sparsity_coeff", [1e-5, 1e-2])
def test_relu_target_l0_pulls_l0_to_the_target_from_a_weak_or_a_strong_coeff(sparsity_coeff):
    data = sparse_data()
    free = l0_of(train_sae(data, config(sparsity_coeff=sparsity_coeff)), data)
    held = l0_of(train_sae(data, config(sparsity_coeff=sparsity_coeff, target_l0=12)), data)
    assert abs(held - 12) < 0.5 * abs(free - 12)
    assert 6 < held < 20


def test_resuming_a_run_with_target_l0_continues_the_controller_exactly(tmp_path):
    data = sparse_data(n_tokens=1024)
    settings = dict(target_l0=6, max_epochs=4, sparsity_coeff=1e-3)
    uninterrupted = train_sae(data, config(**settings))
    calls = []
    cancelled = train_sae(data, config(**settings), checkpoint_dir=tmp_path,
                          should_stop=lambda: calls.append(1) or len(calls) > 10)
    saved = torch.load(cancelled.checkpoints[-1].path, weights_only=True)
    assert saved["sparsity_multiplier"] != 1.0  # the controller had moved when it stopped
    resumed = train_sae(data, config(**settings), resume_from=cancelled.checkpoints[-1].path)
    np.testing.assert_allclose(resumed.loss_history, uninterrupted.loss_history, rtol=1e-6)
    for name, value in uninterrupted.sae.state_dict().items():
        torch.testing.assert_close(resumed.sae.state_dict()[name], value)
