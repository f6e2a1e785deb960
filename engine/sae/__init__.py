"""Sparse autoencoders: one module per architecture on a registry (engine.sae.registry), and the
torch module they share (engine.sae.module).

- relu:      f = relu(pre); L1 weighted by decoder norms (its weight steered to target_l0 when given);
             dead features resampled.
- topk:      the k largest pre-activations per token (Gao et al. 2024); AuxK.
- batchtopk: the k*B largest over a batch of B tokens (Bussmann et al. 2024); a threshold at inference.
- jumprelu:  learned per-feature thresholds and an L0 (or target-L0) penalty (Gemma Scope).
- matryoshka_batchtopk: BatchTopK whose nested prefixes each reconstruct the input (Bussmann et al. 2025).
- gated:     a gate path picks the features, a magnitude path sizes them (Rajamanoharan et al. 2024).
- transcoder, skip_transcoder: TopK codes of an MLP's input that predict its output (Dunefsky et
  al. 2024), the skip one with a learned linear skip W_skip (Paulo et al. 2025).

Importing this package imports no torch (the web process lists and checks architectures);
SparseAutoencoder, build_sae and sae_from_state_dict load the torch side when first asked for.
"""
# Each registers its architecture; in this order the API lists them.
from engine.sae import relu  # noqa: F401, I001
from engine.sae import topk  # noqa: F401
from engine.sae import batchtopk  # noqa: F401
from engine.sae import jumprelu  # noqa: F401
from engine.sae import matryoshka_batchtopk  # noqa: F401
from engine.sae import gated  # noqa: F401
from engine.sae import transcoder  # noqa: F401
from engine.sae.registry import (  # noqa: F401 (the registry's API)
    MAX_NAME_LENGTH, Architecture, RequestField, Sites, check_config, check_request, describe_field, get, names,
    register, request_fields, taking, unregister,
)

_TORCH_SIDE = ("SparseAutoencoder", "build_sae", "sae_from_state_dict")


def __getattr__(name):
    if name in _TORCH_SIDE:
        from engine.sae import module

        return getattr(module, name)
    raise AttributeError(f"module 'engine.sae' has no attribute '{name}'")
