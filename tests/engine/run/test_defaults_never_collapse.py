"""With only hidden_dim given (and k where required), every architecture trains a usable SAE on
activations of any width from 48 to 4096, even when they carry a large offset, as residual streams
do (issue 17: width 48 with a constant offset left relu at EV -0.4 and jumprelu with every feature
dead). Under one sparsity price for every width, jumprelu's L0 here went 4 at width 48 to 44 at
4096 (EV 0.37 at 48); with the price scaled by the width, 21 and 28 (engine.sae.jumprelu).

The data: a planted dictionary of 64 unit directions, about 4 active per token with magnitudes in
[0.5, 1.5], then an offset ten times the signal's mean norm; the SAE has as many features as the
dictionary, so its width is never what limits it. 1,000 steps (the service's
MISTUDIO_MIN_SAE_STEPS; min_update_travel kept from adding more, for CI's time). "Usable" is what
engine.run.verdict does not warn about: explained variance of at least 0.2 and an L0 of at least 1
and under half the features. The narrowest EV, topk's at width 48, is 0.36; the densest L0,
jumprelu's at 4096, 28 of 64."""
import numpy as np
import pytest

from engine.evaluation.reconstruction import evaluate_sae
from engine.run.verdict import MAX_L0_SHARE, MIN_EXPLAINED_VARIANCE, MIN_L0
from engine.trainer import TrainConfig, train_sae

HIDDEN_DIM = 64
ACTIVE_PER_TOKEN = 4
TAKES_K = ("topk", "batchtopk", "matryoshka_batchtopk")
EVERY_ARCHITECTURE = ("relu", "gated", "jumprelu", *TAKES_K)
# relu's and jumprelu's sparsity prices are the ones that scale with the width
# (engine.sae.registry.Architecture.sparsity_weight, engine.sae.jumprelu): they are checked at every
# width; every architecture at the narrowest and the widest (the L1, L0 and TopK families at 4096,
# where a run costs the most).
CASES = ([(a, 48, "constant") for a in EVERY_ARCHITECTURE]
         + [(a, w, o) for a in ("relu", "jumprelu") for w, o in ((128, "random"), (1024, "constant"))]
         + [(a, 4096, "random") for a in ("relu", "jumprelu", "topk")])


def planted(width: int, offset: str, n_rows: int = 2048, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((HIDDEN_DIM, width))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    fires = rng.random((n_rows, HIDDEN_DIM)) < ACTIVE_PER_TOKEN / HIDDEN_DIM
    x = (rng.uniform(0.5, 1.5, (n_rows, HIDDEN_DIM)) * fires) @ directions
    signal = np.linalg.norm(x, axis=1).mean()
    if offset == "constant":  # every coordinate shifted by the same amount
        x += 10 * signal / np.sqrt(width)
    else:  # a random mean vector of the same norm
        mean = rng.standard_normal(width)
        x += 10 * signal * mean / np.linalg.norm(mean)
    return x.astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize(("architecture", "width", "offset"), CASES)
def test_defaults_give_a_sparse_sae_that_explains_the_data(architecture, width, offset):
    x = planted(width, offset)
    k = ACTIVE_PER_TOKEN if architecture in TAKES_K else None
    result = train_sae(x, TrainConfig(cpu_bf16="off", hidden_dim=HIDDEN_DIM, architecture=architecture, k=k,
                                      min_steps=1000, min_update_travel=0.0))
    start, stop = result.heldout_rows
    evaluation = evaluate_sae(result.sae, x[start:stop], scaling_factor=result.scaling_factor)
    assert evaluation["explained_variance"] >= MIN_EXPLAINED_VARIANCE
    assert MIN_L0 <= evaluation["l0"] < MAX_L0_SHARE * HIDDEN_DIM
