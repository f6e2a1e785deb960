"""`manage.py train` recovers a sparse dictionary we planted: the end-to-end check that training,
the input scaling and the export fit together, not only that the loss goes down."""
import math

import numpy as np
import pytest
import torch

from tests.training.commands.test_train_command import OWN_DATABASE, last_json, train_command

pytestmark = OWN_DATABASE

D_MODEL = 32
TRUE_FEATURES = 64
FEATURES_PER_TOKEN = 3
TOKENS = 20_000
# Fast on two cores without tuning per architecture; the defaults are sized for real corpora.
COMMON = ("--hidden-dim", "128", "--learning-rate", "0.003", "--min-loss", "0", "--no-progress")


def l1_coeff(lam: float) -> str:
    """The sparsity_coeff that puts the L1's lambda at `lam` for inputs of width D_MODEL: lambda is
    2000 x sparsity_coeff at width 384 and grows as sqrt(width / 384) (docs/architectures.md)."""
    return f"{lam / (2000 * math.sqrt(D_MODEL / 384)):.6g}"


@pytest.fixture(scope="module")
def planted():
    """Unit directions in D_MODEL dimensions; each token is a non-negative mix of 3 of them, drawn with
    Zipf-like frequencies (the commonest ~8x the rarest) and magnitudes between 0.5 and 2."""
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(TRUE_FEATURES, D_MODEL))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    frequencies = 1.0 / np.arange(1, TRUE_FEATURES + 1) ** 0.5
    frequencies /= frequencies.sum()
    chosen = np.stack([rng.choice(TRUE_FEATURES, FEATURES_PER_TOKEN, replace=False, p=frequencies) for _ in range(TOKENS)])
    codes = np.zeros((TOKENS, TRUE_FEATURES))
    np.put_along_axis(codes, chosen, rng.uniform(0.5, 2.0, size=chosen.shape), axis=1)
    return (codes @ directions).astype(np.float32), directions


@pytest.fixture(scope="module")
def train_on_planted(planted, tmp_path_factory):
    # One database and one activations file for the module's runs: each run is its own job.
    folder = tmp_path_factory.mktemp("ground-truth")
    path = folder / "planted.npy"
    np.save(path, planted[0])
    run_train = train_command(folder)

    def train(*args):
        # Matrices this small only contend for threads: one per process keeps each run to seconds
        # (on two busy cores, torch's default of a thread per core made a run 10-20 times slower).
        done = run_train("--activations", str(path), *COMMON, *args, extra_env={"OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr
        return last_json(done.stdout)

    return train


def recovery(result, directions):
    """Mean over the true directions of the best cosine similarity with any decoder row."""
    decoder = torch.load(result["model_path"], weights_only=True)["W_dec"].double().numpy()
    decoder /= np.linalg.norm(decoder, axis=1, keepdims=True).clip(1e-12)
    return float((directions @ decoder.T).max(axis=1).mean())


@pytest.mark.slow
def test_topk_at_the_true_k_recovers_the_planted_features(train_on_planted, planted):
    result = train_on_planted("--architecture", "topk", "--k", str(FEATURES_PER_TOKEN),
                              "--max-epochs", "5", "--sae-batch-tokens", "512")
    assert recovery(result, planted[1]) >= 0.9
    assert result["evaluation"]["explained_variance"] >= 0.9
    assert result["evaluation"]["l0"] == pytest.approx(FEATURES_PER_TOKEN)


@pytest.mark.slow
def test_relu_at_a_tuned_penalty_recovers_the_planted_features(train_on_planted, planted):
    # λ = 1 (the seed's default is λ = 2 at width 384).
    result = train_on_planted("--architecture", "relu", "--sparsity-coeff", l1_coeff(1),
                              "--max-epochs", "20", "--sae-batch-tokens", "256")
    assert recovery(result, planted[1]) >= 0.9
    assert result["evaluation"]["explained_variance"] >= 0.9


@pytest.mark.slow
def test_a_higher_jumprelu_penalty_gives_fewer_active_features(train_on_planted):
    def l0(coeff):
        result = train_on_planted("--architecture", "jumprelu", "--sparsity-coeff", coeff,
                                  "--max-epochs", "3", "--sae-batch-tokens", "512")
        return result["evaluation"]["l0"]

    assert l0("0.0016") < 0.75 * l0("0.000016")


@pytest.mark.slow
def test_batchtopk_at_the_true_k_recovers_the_planted_features(train_on_planted, planted):
    result = train_on_planted("--architecture", "batchtopk", "--k", str(FEATURES_PER_TOKEN),
                              "--max-epochs", "10", "--sae-batch-tokens", "512")
    assert recovery(result, planted[1]) >= 0.9
    assert result["evaluation"]["explained_variance"] >= 0.9
    # Per token the count varies; over the held-out tokens it averages about k.
    assert result["evaluation"]["l0"] == pytest.approx(FEATURES_PER_TOKEN, rel=0.3)


def relative_reconstruction_bias(result, activations):
    """gamma = E||x_hat||^2 / E[x_hat . x] (Rajamanoharan et al. 2024, section 4.2): the 1/gamma that best
    rescales the reconstructions; below 1, the penalty shrinks them."""
    from engine.sae import sae_from_state_dict

    sae = sae_from_state_dict(torch.load(result["model_path"], weights_only=True))  # recognised by its keys
    x = torch.from_numpy(activations[-2000:])
    with torch.no_grad():
        x_hat = sae(x).output
    return float((x_hat * x_hat).sum() / (x_hat * x).sum())


@pytest.mark.slow
def test_gated_recovers_the_planted_features_without_the_shrinkage_of_relu_at_the_same_penalty(train_on_planted,
                                                                                              planted):
    # λ = 4 for both: relu is pushed to shrink its codes hard, which is what the gate is there to
    # avoid. gated's weight is twice relu's for a sparsity_coeff, so it gets half the coefficient.
    args = ("--max-epochs", "20", "--sae-batch-tokens", "256")
    gated = train_on_planted("--architecture", "gated", "--sparsity-coeff", l1_coeff(2), *args)
    relu = train_on_planted("--architecture", "relu", "--sparsity-coeff", l1_coeff(4), *args)
    assert gated["architecture"] == "gated"
    assert recovery(gated, planted[1]) >= 0.9
    assert gated["evaluation"]["l0"] == pytest.approx(FEATURES_PER_TOKEN, rel=0.3)
    assert gated["evaluation"]["explained_variance"] >= 0.85
    assert 0.95 < relative_reconstruction_bias(gated, planted[0]) < 1.05
    assert relative_reconstruction_bias(relu, planted[0]) < 0.75
    assert gated["evaluation"]["explained_variance"] > relu["evaluation"]["explained_variance"] + 0.1
