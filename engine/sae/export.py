"""Saving a trained SAE so it runs directly on raw (unscaled) activations.

The trainer feeds the SAE s * x, with s chosen so the mean norm is sqrt(d_in). Folding s in:
  encode:  relu((s x - b_dec) W_enc + b_enc) = relu((x - b_dec/s) (s W_enc) + b_enc)
  decode:  (f W_dec + b_dec) / s            = f (W_dec/s) + b_dec/s
so the exported SAE has the same features f on raw x and reconstructs raw x. The pre-activations
are unchanged by the folding, so a TopK's k and a JumpReLU threshold are unchanged too; they are
saved as `threshold` [d_sae] for jumprelu and batchtopk (SAELens' name).

A transcoder reads x scaled by s_in and predicts y scaled by s_out: W_enc takes s_in, the decoder
side (W_dec, b_dec) 1/s_out, and a skip transcoder's W_skip s_in/s_out.
"""

import json
from pathlib import Path

import torch

from engine.files import AtomicFile
from engine.finite import json_ready
from engine.sae import SparseAutoencoder


def export_state_dict(sae: SparseAutoencoder, scaling_factor: float,
                      target_scaling_factor: float | None = None) -> dict[str, torch.Tensor]:
    """`target_scaling_factor`: a transcoder's output scale (TrainResult.target_scaling_factor)."""
    s = float(scaling_factor)
    s_out = s if target_scaling_factor is None else float(target_scaling_factor)
    with torch.no_grad():
        return {
            "W_enc": (sae.W_enc * s).detach().cpu().contiguous(),
            "b_enc": sae.b_enc.detach().cpu().clone(),
            "W_dec": (sae.W_dec / s_out).detach().cpu().contiguous(),
            "b_dec": (sae.b_dec / s_out).detach().cpu().contiguous(),
            **{name: t.detach().cpu().contiguous() for name, t in sae.extra_state_for_export().items()},
            **sae.kind.scaled_export_tensors(sae, s, s_out),
        }


def save_sae(path: Path, sae: SparseAutoencoder, scaling_factor: float,
             target_scaling_factor: float | None = None) -> dict[str, torch.Tensor]:
    """Write the folded state dict atomically and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = export_state_dict(sae, scaling_factor, target_scaling_factor)
    with AtomicFile(path) as partial:
        torch.save(state_dict, partial)
    return state_dict


def write_metadata(path: Path, metadata: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Strict JSON: a metric that was not measured is null with its reason (engine.finite), never NaN.
    path.write_text(json.dumps(json_ready(metadata), indent=2, default=str, allow_nan=False) + "\n", encoding="utf-8")
