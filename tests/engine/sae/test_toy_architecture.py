"""An architecture is one module on the registry: this test module registers one of its own, and
it trains, checkpoints, resumes and exports with no other module knowing its name."""
import json

import numpy as np
import pytest
import torch

from engine import sae as architectures
from engine.sae.export import save_sae
from engine.sae.export_saelens import export_saelens
from engine.sae import Architecture, register, sae_from_state_dict
from engine.trainer import TrainConfig, train_sae

NAME = "gainrelu_test"


class GainReLU(Architecture):
    """relu(pre) times a learned per-feature gain, with its own parameter, penalty and export."""

    name = NAME
    saelens_name = "standard"
    state_keys = frozenset({"log_gain"})

    def setup(self, sae, options):
        sae.log_gain = torch.nn.Parameter(torch.zeros(sae.d_sae))

    def activate(self, sae, pre):
        return pre.relu() * sae.log_gain.exp()

    def sparsity_loss(self, sae, pre, f, config):
        return f.sum(dim=-1).mean()

    def export_tensors(self, sae):
        return {"gain": sae.log_gain.detach().exp().clone()}


@pytest.fixture
def toy():
    register(GainReLU)
    yield GainReLU
    architectures.unregister(NAME)


def data():
    return np.random.default_rng(3).normal(size=(800, 12)).astype(np.float32)


def config(**overrides):
    values = dict(min_steps=0, cpu_bf16="off", architecture=NAME, hidden_dim=24, learning_rate=3e-3, sae_batch_tokens=100, max_epochs=4,
                  min_loss=0.0, checkpoint_every_epochs=2, checkpoint_interval_s=1e9, progress_interval_s=0.0)
    values.update(overrides)
    return TrainConfig(**values)


def test_a_registered_architecture_trains_checkpoints_resumes_and_exports(toy, tmp_path):
    assert NAME in architectures.names()
    whole = train_sae(data(), config(), checkpoint_dir=tmp_path / "ckpt")
    assert whole.architecture == NAME and whole.loss_history[-1] < whole.loss_history[0]
    assert (whole.sae.log_gain != 0).any()  # its own parameter was trained
    at_2 = next(c.path for c in whole.checkpoints if c.epoch == 2)
    resumed = train_sae(data(), config(), resume_from=at_2)
    assert resumed.loss_history == whole.loss_history
    torch.testing.assert_close(resumed.sae.log_gain, whole.sae.log_gain)

    weights = save_sae(tmp_path / "sae.pt", whole.sae, whole.scaling_factor)
    assert "gain" in weights
    folder = export_saelens(tmp_path / "saelens", whole.sae, whole.scaling_factor, model_name=None, hook_name=None,
                            context_size=None)
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == "standard" and cfg["metadata"]["trained_architecture"] == NAME
    # Recognised by its own key when rebuilt from a state dict.
    rebuilt = sae_from_state_dict(whole.sae.state_dict())
    assert rebuilt.architecture == NAME
    x = torch.from_numpy(data()[:50]) * whole.scaling_factor
    torch.testing.assert_close(rebuilt.eval()(x).output, whole.sae(x).output)


def test_an_unregistered_architecture_is_refused_with_the_registered_names(toy):
    architectures.unregister(NAME)
    with pytest.raises(Exception, match="architecture must be one of relu, topk, batchtopk, jumprelu"):
        train_sae(data(), config())
