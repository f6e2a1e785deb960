"""matryoshka_widths: the default derived from hidden_dim, hidden_dim added as the last prefix, the
engine's refusals, and the widths travelling in the SAE's state dict."""
import pytest
import torch

from engine.errors import EngineError
from engine.sae import build_sae, check_request, sae_from_state_dict
from engine.sae.matryoshka_batchtopk import default_widths, resolved_widths
from engine.trainer import TrainConfig, train_sae
from tests.engine.trainer.test_sae_training import sparse_data


def request(**values):
    return {"k": 8, "target_l0": None, "matryoshka_widths": None, **values}


def test_the_default_prefixes_are_doubling_groups_from_a_32nd_of_the_dictionary():
    assert default_widths(16384) == [512, 1536, 3584, 7680, 16384]
    assert default_widths(128) == [4, 12, 28, 60, 128]
    assert default_widths(16) == [1, 3, 7, 16]  # 16/32 rounds to no features: that prefix is dropped
    assert default_widths(1) == [1]


def test_hidden_dim_is_added_when_the_last_width_is_smaller():
    assert resolved_widths([128, 512], 2048) == [128, 512, 2048]
    assert resolved_widths([128, 2048], 2048) == [128, 2048]
    assert build_sae("matryoshka_batchtopk", 8, 64, k=2, matryoshka_widths=[4, 16]).matryoshka_widths.tolist() == [4, 16, 64]


@pytest.mark.parametrize("widths,problem", [
    ([512, 128], "strictly increasing"),
    ([128, 128], "strictly increasing"),
    ([0, 128], "positive integers"),
    ([], "non-empty list"),
    ([128, 4096], "the last width, 4096, is more than hidden_dim (2048)"),
])
def test_bad_widths_are_refused_naming_the_field(widths, problem):
    assert check_request("matryoshka_batchtopk", request(matryoshka_widths=widths), hidden_dim=2048).startswith(
        "matryoshka_widths: ")
    assert problem in check_request("matryoshka_batchtopk", request(matryoshka_widths=widths), hidden_dim=2048)
    with pytest.raises(EngineError, match="matryoshka_widths"):
        build_sae("matryoshka_batchtopk", 8, 2048, k=2, matryoshka_widths=widths)


def test_widths_only_apply_to_matryoshka_and_k_is_required():
    assert "only applies to matryoshka_batchtopk" in check_request("batchtopk", request(matryoshka_widths=[4]), hidden_dim=64)
    assert "k: required" in check_request("matryoshka_batchtopk", request(k=None), hidden_dim=64)
    assert check_request("matryoshka_batchtopk", request(matryoshka_widths=[4, 16]), hidden_dim=64) is None


def test_a_trained_sae_rebuilds_its_prefixes_from_its_state_dict():
    result = train_sae(sparse_data(n_tokens=1024), TrainConfig(cpu_bf16="off", 
        min_steps=0, architecture="matryoshka_batchtopk", k=3, hidden_dim=64, matryoshka_widths=[8, 24], learning_rate=1e-2,
        sae_batch_tokens=256, max_epochs=2, min_loss=0.0, checkpoint_every_epochs=0, checkpoint_interval_s=1e9))
    restored = sae_from_state_dict(result.sae.state_dict(), k=3).eval()  # recognised by its keys
    assert restored.architecture == "matryoshka_batchtopk"
    assert restored.matryoshka_widths.tolist() == [8, 24, 64]
    x = torch.from_numpy(sparse_data(n_tokens=64, seed=5)) * result.scaling_factor
    with torch.no_grad():
        torch.testing.assert_close(restored(x).output, result.sae.eval()(x).output)
