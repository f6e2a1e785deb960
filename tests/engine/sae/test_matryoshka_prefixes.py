"""A Matryoshka BatchTopK SAE (Bussmann et al. 2025) recovers a planted dictionary, and each of its
nested prefixes reconstructs the input on its own, where a plain BatchTopK SAE's prefixes do not."""
import numpy as np
import pytest
import torch

from engine.trainer import TrainConfig, train_sae

D_IN, TRUE_FEATURES, ACTIVE, TOKENS = 32, 64, 3, 8192
WIDTHS = [8, 32]  # and hidden_dim, 128, added as the last prefix


@pytest.fixture(scope="module")
def planted():
    """Unit directions; each token a positive mix of 3 of them, drawn with Zipf-like frequencies (the
    commonest ~8x the rarest), so a small prefix has frequent features to learn first."""
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(TRUE_FEATURES, D_IN))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    frequencies = 1.0 / np.arange(1, TRUE_FEATURES + 1) ** 0.5
    frequencies /= frequencies.sum()
    codes = np.zeros((TOKENS, TRUE_FEATURES))
    for row in codes:
        row[rng.choice(TRUE_FEATURES, ACTIVE, replace=False, p=frequencies)] = rng.uniform(0.5, 2.0, ACTIVE)
    return (codes @ directions * 7.0).astype(np.float32), directions


def trained(data, architecture):
    config = TrainConfig(min_steps=0, cpu_bf16="off", architecture=architecture, k=ACTIVE, hidden_dim=128, learning_rate=3e-3, sae_batch_tokens=512,
                         max_epochs=20, min_loss=0.0, checkpoint_every_epochs=0, checkpoint_interval_s=1e9,
                         matryoshka_widths=WIDTHS if architecture == "matryoshka_batchtopk" else None)
    return train_sae(data, config)


@pytest.fixture(scope="module")
def matryoshka(planted):
    return trained(planted[0], "matryoshka_batchtopk")


def prefix_explained_variance(result, data) -> dict[int, float]:
    """{width: explained variance of the first `width` features' reconstruction} on held-out rows."""
    sae = result.sae.eval()
    x = torch.from_numpy(data[-1000:]) * result.scaling_factor
    with torch.no_grad():
        f = sae.encode(x)
        deviation = ((x - x.mean(dim=0)) ** 2).sum()
        return {width: 1 - (((x - (f[:, :width] @ sae.W_dec[:width] + sae.b_dec)) ** 2).sum() / deviation).item()
                for width in (*WIDTHS, sae.d_sae)}


@pytest.mark.slow
def test_matryoshka_recovers_the_planted_directions(matryoshka, planted):
    data, directions = planted
    decoder = matryoshka.sae.W_dec.detach().double().numpy()
    decoder /= np.linalg.norm(decoder, axis=1, keepdims=True)
    assert (directions @ decoder.T).max(axis=1).mean() >= 0.9
    assert prefix_explained_variance(matryoshka, data)[128] >= 0.8
    with torch.no_grad():
        f = matryoshka.sae.eval().encode(torch.from_numpy(data[-1000:]) * matryoshka.scaling_factor)
    assert 2 < (f > 0).sum(dim=1).float().mean().item() < 4.5  # BatchTopK's threshold holds L0 near k


def test_each_prefix_reconstructs_on_its_own_better_with_width(matryoshka, planted):
    explained = prefix_explained_variance(matryoshka, planted[0])
    assert explained[8] > 0.15  # 8 of 128 features carry a fifth of the variance
    assert explained[8] < explained[32] < explained[128]


@pytest.mark.slow
def test_the_prefix_losses_are_what_makes_small_prefixes_reconstruct(matryoshka, planted):
    plain = prefix_explained_variance(trained(planted[0], "batchtopk"), planted[0])
    nested = prefix_explained_variance(matryoshka, planted[0])
    assert nested[8] > plain[8] + 0.1 and nested[32] > plain[32] + 0.1


def test_each_inner_prefix_loss_is_the_mse_of_that_prefix_alone(planted):
    from torch.nn.functional import mse_loss

    from engine.sae import build_sae

    sae = build_sae("matryoshka_batchtopk", D_IN, 128, k=ACTIVE, matryoshka_widths=WIDTHS)
    sae.initialize_(torch.from_numpy(planted[0][:512]), torch.Generator().manual_seed(0))
    x = torch.from_numpy(planted[0][:256]) / 7.0
    f = sae.train().encode(x)
    losses = sae.kind.reconstruction_losses(sae, x, f)
    assert list(losses) == ["inner_mse_8", "inner_mse_32"]  # the whole SAE's is the trainer's `mse`
    for width in WIDTHS:
        alone = f[:, :width] @ sae.W_dec[:width] + sae.b_dec
        torch.testing.assert_close(losses[f"inner_mse_{width}"], mse_loss(alone, x))


def test_evaluation_reports_each_prefix_alone_on_raw_activations(matryoshka, planted):
    from engine.evaluation.reconstruction import evaluate_sae

    metrics = evaluate_sae(matryoshka.sae, planted[0][-1000:], scaling_factor=matryoshka.scaling_factor, batch_tokens=300)
    by_width = metrics["prefix_explained_variance"]
    assert list(by_width) == ["8", "32", "128"]
    expected = prefix_explained_variance(matryoshka, planted[0])
    for width, explained in expected.items():
        assert by_width[str(width)] == pytest.approx(explained, abs=1e-4)
    assert by_width["128"] == pytest.approx(metrics["explained_variance"], abs=1e-6)  # the whole SAE is the last prefix
