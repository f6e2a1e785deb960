"""Writing a trained SAE as a SAELens folder (cfg.json, sae_weights.safetensors, sparsity.safetensors).

The input scaling is folded into the weights (engine.sae.export), so the folder runs on raw
activations with normalize_activations "none". Each architecture says its SAELens 6 name and any
cfg entries of its own (engine.sae): relu is "standard"; batchtopk is saved as "jumprelu" with its
inference threshold, which is exactly how it encodes outside training; gated's b_enc is saved as
SAELens' b_gate.

Transcoders are SAELens' `transcoder` and `skip_transcoder` (sae_lens/saes/transcoder.py): d_out,
apply_b_dec_to_input false, W_skip [d_out, d_in] for the skip; hook_name is the input's point
(blocks.L.ln2.hook_normalized, the MLP's input, which circuit-tracer calls blocks.L.mlp.hook_in)
and metadata.hook_name_out the output's (blocks.L.hook_mlp_out), the names SAELens' transcoder
loaders write. SAELens' transcoder encodes with a ReLU: ours keep each token's top k (cfg `k`).
"""

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from engine.errors import EngineError
from engine.sae.export import export_state_dict

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SAE_LENS_VERSION = "6.0.0"


def export_saelens(
    folder: Path,
    sae,
    scaling_factor: float,
    *,
    model_name: str | None,
    hook_name: str | None,
    context_size: int | None,
    prepend_bos: bool | None = None,
    exclude_special_tokens: bool | None = None,
    dtype: str = "float32",
    feature_density: np.ndarray | None = None,
    target_scaling_factor: float | None = None,
    hook_name_out: str | None = None,
) -> Path:
    """`feature_density` is the fraction of tokens each feature fires on ([d_sae]); without it no
    sparsity.safetensors is written. `context_size` counts the BOS, as SAELens' does;
    `prepend_bos` and `exclude_special_tokens` are what SAELens' ActivationsStore.from_sae and its
    evals read (None when trained from an activations file). A transcoder's `target_scaling_factor`
    (TrainResult's) folds into its decoder, and `hook_name_out` names where its output goes."""
    if dtype not in _DTYPES:
        raise EngineError(f"dtype must be one of {', '.join(_DTYPES)}, not '{dtype}'")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    architecture = sae.kind.saelens_name
    tensors = sae.kind.saelens_tensors(export_state_dict(sae, scaling_factor, target_scaling_factor))
    weights = {name: t.to(_DTYPES[dtype]).contiguous() for name, t in tensors.items()}
    cfg = {
        "architecture": architecture,
        "d_in": int(sae.d_in),
        "d_sae": int(sae.d_sae),
        "dtype": dtype,
        "device": "cpu",
        "apply_b_dec_to_input": bool(sae.kind.apply_b_dec_to_input),
        "normalize_activations": "none",
        "metadata": {
            "sae_lens_version": SAE_LENS_VERSION,
            "model_name": model_name,
            "hook_name": hook_name,
            **({} if hook_name_out is None else {"hook_name_out": hook_name_out}),
            # None when trained from an activations file: there were no sequences.
            "context_size": None if context_size is None else int(context_size),
            "prepend_bos": prepend_bos,
            "exclude_special_tokens": exclude_special_tokens,
            "trained_architecture": sae.architecture,
        },
    }
    cfg.update(sae.kind.saelens_config(sae))
    save_file(weights, str(folder / "sae_weights.safetensors"))
    if feature_density is not None:
        density = torch.as_tensor(np.asarray(feature_density), dtype=torch.float32)
        if density.shape != (sae.d_sae,):
            raise EngineError(f"feature_density has shape {tuple(density.shape)}, not ({sae.d_sae},)")
        # SAELens' own training log: log10(density + 1e-10).
        save_file({"sparsity": torch.log10(density + 1e-10).contiguous()}, str(folder / "sparsity.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    return folder
