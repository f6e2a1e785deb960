"""Feature statistics of a trained SAE over a whole activations set: how many features fired at
all, and how often and how strongly on average. A job takes them from its feature analysis pass
(engine.evaluation.features), which counts the same; feature_statistics is the pass of their own, for an SAE
with no analysis (a cancelled one, a notebook)."""

import numpy as np
import torch

from engine.activations.source import float_tensor
from engine.sae import SparseAutoencoder


def statistics_from_counts(fire_counts: np.ndarray, activation_sums: np.ndarray, n_tokens: int) -> dict:
    """`fire_counts[i]`: tokens on which feature i is > 0; `activation_sums[i]`: the sum of its
    activations over all tokens (float64)."""
    d_sae = int(len(fire_counts))
    cells = n_tokens * d_sae
    active_features = int(np.count_nonzero(fire_counts))
    fired = float(np.sum(fire_counts, dtype=np.float64))
    return {
        "total_features": d_sae,
        "active_features": active_features,
        "dead_features": d_sae - active_features,
        "mean_activation": float(np.sum(activation_sums, dtype=np.float64)) / cells if cells else 0.0,
        "sparsity_achieved": fired / cells if cells else 0.0,
        "l0": fired / n_tokens if n_tokens else 0.0,
    }


def statistics_from_analysis(analysis) -> dict:
    """The same numbers from an engine.evaluation.features.FeatureAnalysis of the same rows: its frequencies
    give the counts exactly; its per-feature means (float32) give the sums to ~1e-7."""
    fire_counts = np.rint(analysis.frequency * analysis.n_rows).astype(np.int64)
    activation_sums = fire_counts * analysis.mean_activation.astype(np.float64)
    return statistics_from_counts(fire_counts, activation_sums, analysis.n_rows)


@torch.no_grad()
def feature_statistics(
    sae: SparseAutoencoder,
    activations,
    *,
    scaling_factor: float,
    device: str = "cpu",
    batch_tokens: int = 4096,
) -> dict:
    """Counts over every token. `sae` is the trained (normalized-space) SAE and `activations` are
    raw; f = sae.encode(s * x) equals the exported SAE's encode(x) exactly (see engine.sae.export), so
    mean_activation is in the exported SAE's units. Pass scaling_factor=1.0 for an exported SAE.
    """
    sae = sae.to(device).eval()
    n_tokens = int(activations.shape[0])
    fire_counts = torch.zeros(sae.d_sae, dtype=torch.int64, device=device)
    activation_sums = torch.zeros(sae.d_sae, dtype=torch.float64, device=device)
    for start in range(0, n_tokens, batch_tokens):
        f = sae.encode(float_tensor(activations[start : start + batch_tokens], device) * scaling_factor)
        fire_counts += (f > 0).sum(dim=0)
        activation_sums += f.sum(dim=0, dtype=torch.float64)
    return statistics_from_counts(fire_counts.cpu().numpy(), activation_sums.cpu().numpy(), n_tokens)
