"""Reconstruction and sparsity metrics of a trained SAE on held-out activations.

Metrics are in the raw (unscaled) activation space: x_hat = decode(encode(s x)) / s, which is what
the exported SAE (engine.sae.export) computes on raw x. Explained variance and cosine similarity do not
depend on the space; `mse` (mean over elements) does, and is in raw units.
Cross-entropy metrics need the language model and live elsewhere.

An SAE given targets (a transcoder: the MLP's output, row for row with its inputs) is scored on them:
explained variance is 1 - FVU of y_hat = predict(s_in x) / s_out against y.
"""

import numpy as np
import torch

from engine.activations.source import float_tensor

# log10 feature density bins; a feature that never fires on the evaluation tokens has no log.
_DENSITY_BIN_EDGES = np.arange(-7.0, 0.01, 0.5)
_DENSE_FRACTION = 0.1


@torch.no_grad()
def evaluate_sae(
    sae,
    activations,
    *,
    scaling_factor: float,
    device: str = "cpu",
    batch_tokens: int = 4096,
    dead_counts: np.ndarray | None = None,
    dead_window_tokens: int | None = None,
    targets=None,
    target_scaling_factor: float | None = None,
) -> dict:
    """`activations` are the raw held-out rows (e.g. activations[start:stop] for
    TrainResult.heldout_rows). `dead_counts` are TrainResult.tokens_since_fired, with
    TrainResult.dead_window_tokens: a feature is dead when its count reaches the window. Without
    them a feature is dead when it never fires on these rows. `targets`: the held-out rows the SAE
    predicts, row for row with `activations`, when they are not those (TrainResult.target_scaling_factor)."""
    sae = sae.to(device).eval()
    s = float(scaling_factor)
    s_out = s if target_scaling_factor is None else float(target_scaling_factor)
    n_tokens = int(activations.shape[0])
    d_in = int(activations.shape[1] if targets is None else targets.shape[1])
    fire_counts = torch.zeros(sae.d_sae, dtype=torch.float64, device=device)
    active_sum = sq_err = sq_sum = cos_sum = 0.0
    x_sum = torch.zeros(d_in, dtype=torch.float64, device=device)
    prefix_sq_err = {}  # width: squared error of the first `width` features alone (Matryoshka)
    for start in range(0, n_tokens, batch_tokens):
        chunk = activations[start : start + batch_tokens]
        out = sae(float_tensor(chunk, device) * s)
        f, x_hat = out.codes, out.output / s_out
        # x: what the SAE predicts (its input, or the targets paired with it)
        x = float_tensor(chunk if targets is None else targets[start : start + batch_tokens], device)
        active = f > 0
        fire_counts += active.sum(dim=0, dtype=torch.float64)
        active_sum += active.sum(dtype=torch.float64).item()
        x64, x_hat64 = x.double(), x_hat.double()
        sq_err += ((x64 - x_hat64) ** 2).sum().item()
        sq_sum += (x64**2).sum().item()
        x_sum += x64.sum(dim=0)
        cos_sum += torch.nn.functional.cosine_similarity(x64, x_hat64, dim=1, eps=1e-12).sum().item()
        for width, prefix in sae.kind.prefix_reconstructions(sae, f).items():
            prefix_sq_err[width] = prefix_sq_err.get(width, 0.0) + ((x64 - prefix.double() / s) ** 2).sum().item()

    # sum ||x - mean||^2 = sum ||x||^2 - n ||mean||^2
    total_var = sq_sum - (x_sum**2).sum().item() / n_tokens if n_tokens else 0.0
    density = (fire_counts / max(n_tokens, 1)).cpu().numpy()
    return {
        "l0": active_sum / n_tokens if n_tokens else 0.0,
        "explained_variance": 1.0 - sq_err / total_var if total_var > 0 else float("nan"),
        "mse": sq_err / (n_tokens * d_in) if n_tokens else float("nan"),
        "cosine_similarity": cos_sum / n_tokens if n_tokens else float("nan"),
        # {width (as text, a JSON key): explained variance of that prefix alone}; None: no prefixes.
        "prefix_explained_variance": {str(width): 1.0 - err / total_var if total_var > 0 else float("nan")
                                      for width, err in prefix_sq_err.items()} or None,
        **_features(density, n_tokens, dead_counts, dead_window_tokens),
        "eval_tokens": n_tokens,
    }


def _features(density: np.ndarray, n_tokens: int, dead_counts, dead_window_tokens) -> dict:
    """Dead and dense features, and the histogram of log10 feature density."""
    if dead_counts is not None:
        window = int(dead_window_tokens) if dead_window_tokens else n_tokens
        dead = np.asarray(dead_counts) >= window
    else:
        window = n_tokens
        dead = density == 0
    fired = density > 0
    log_density = np.clip(np.log10(density[fired]), _DENSITY_BIN_EDGES[0], _DENSITY_BIN_EDGES[-1])
    counts, _ = np.histogram(log_density, bins=_DENSITY_BIN_EDGES)
    return {
        "dead_features": int(dead.sum()),
        "dead_window_tokens": int(window),
        "dense_features": int((density > _DENSE_FRACTION).sum()),
        "density_histogram": {
            "bin_edges": [float(e) for e in _DENSITY_BIN_EDGES],
            "counts": [int(c) for c in counts],
            "never_fired": int((~fired).sum()),  # on these tokens; not binned (log10 0 = -inf)
        },
        "feature_density": [float(d) for d in density],
    }
