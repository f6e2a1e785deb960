"""The run's start: the input scale and the decoder bias's starting point, from a sample of rows."""
import math

import numpy as np
import torch

from engine.activations.source import rows_tensor
from engine.errors import ActivationsError

_SCALE_SAMPLE_TOKENS = 8192
_GEOMETRIC_MEDIAN_ITERATIONS = 20


def sample_indices(n: int, rng: np.random.Generator) -> np.ndarray:
    """Which of n rows the sample takes (an input and its target share them)."""
    return rng.choice(n, size=min(n, _SCALE_SAMPLE_TOKENS), replace=False)


def sample_rows(activations, n: int, rng: np.random.Generator) -> torch.Tensor:
    return rows_tensor(activations, sample_indices(n, rng), "cpu")


def sample_of(window: np.ndarray, seed: int) -> np.ndarray:
    """Which rows of a window (the first rows an extraction writes) the sample takes."""
    return np.random.default_rng(seed).choice(window, size=min(len(window), _SCALE_SAMPLE_TOKENS), replace=False)


def scaling_factor(sample: torch.Tensor) -> float:
    """The scalar that brings the sample's mean L2 distance from its mean to sqrt(d_in).

    Anthropic's April 2024 update scales the raw norm to sqrt(d_in); we measure it about the mean
    (what the SAE must encode once b_dec stands at the data's centre). Residual streams often carry a large
    constant offset, which b_dec (the geometric median) absorbs at once: counting it in the norm
    left the informative part tiny in scaled units, so the sparsity term and JumpReLU's initial
    threshold (both sized for O(1) pre-activations) silenced every feature (issue 17: width 48
    with an offset gave relu EV -0.4 and jumprelu L0 0.1; docs/architectures.md). It is still
    one scalar multiplying the raw inputs, so folding it into saved weights is unchanged."""
    sample = sample.double()
    mean_norm = (sample - sample.mean(dim=0)).norm(dim=1).mean().item()
    if not mean_norm > 0 or not math.isfinite(mean_norm):
        raise ActivationsError("Activations are constant (every row the same) or not finite: nothing to train on")
    return math.sqrt(sample.shape[1]) / mean_norm


def geometric_median(points: torch.Tensor) -> torch.Tensor:
    """Weiszfeld iterations from the mean; the mean itself if they fail. Bricken et al. 2023
    ("Towards Monosemanticity") start b_dec at the geometric median, which outliers move less."""
    points = points.double()
    mean = points.mean(dim=0)
    median = mean
    for _ in range(_GEOMETRIC_MEDIAN_ITERATIONS):
        weights = 1.0 / (points - median).norm(dim=1).clamp_min(1e-8)
        median = (weights[:, None] * points).sum(dim=0) / weights.sum()
    return (median if torch.isfinite(median).all() else mean).float()
