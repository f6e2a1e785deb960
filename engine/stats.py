"""Feature statistics of a trained SAE over a whole activations set, streamed in batches."""

import numpy as np
import torch

from engine.sae import SparseAutoencoder


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
    raw; f = sae.encode(s * x) equals the exported SAE's encode(x) exactly (see engine.export), so
    mean_activation is in the exported SAE's units. Pass scaling_factor=1.0 for an exported SAE.
    """
    sae = sae.to(device).eval()
    n_tokens = int(activations.shape[0])
    fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=device)
    activation_sum = 0.0
    active_sum = 0.0
    for start in range(0, n_tokens, batch_tokens):
        chunk = activations[start : start + batch_tokens]
        x = chunk.to(device, torch.float32) if isinstance(chunk, torch.Tensor) else torch.from_numpy(
            np.asarray(chunk, dtype=np.float32)
        ).to(device)
        f = sae.encode(x * scaling_factor)
        active = f > 0
        fired |= active.any(dim=0)
        activation_sum += f.sum(dtype=torch.float64).item()
        active_sum += active.sum(dtype=torch.float64).item()

    active_features = int(fired.sum().item())
    cells = n_tokens * sae.d_sae
    return {
        "total_features": sae.d_sae,
        "active_features": active_features,
        "dead_features": sae.d_sae - active_features,
        "mean_activation": activation_sum / cells if cells else 0.0,
        "sparsity_achieved": active_sum / cells if cells else 0.0,
        "l0": active_sum / n_tokens if n_tokens else 0.0,
    }
