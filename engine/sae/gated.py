"""Gated SAE (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated Sparse
Autoencoders", arXiv 2404.16014): one path decides which features are on, another how large they
are, so the L1 penalty, which shrinks what it touches, only touches the decision.

    pi_gate = (x - b_dec) W_enc + b_gate                      (the shared `pre`: b_enc is b_gate)
    pi_mag  = (x - b_dec) (W_enc * exp(r_mag)) + b_mag        (the same directions, rescaled)
    f       = 1[pi_gate > 0] * relu(pi_mag)

The step function passes no gradient, so the gate learns from its sparsity term and the auxiliary
reconstruction ||x - (relu(pi_gate) W_dec + b_dec)||^2 with the decoder frozen (the paper's
section 3.2). The sparsity term is the decoder-norm-weighted L1 of relu(pi_gate), at relu's
sparsity_weight, so one sparsity_coeff means the same trade-off for both (and a controller of an
L1's weight, such as a target L0, applies to both alike).

Decoder norms stay free and dead features are not resampled: the paper's authors found that the
decoder-norm-weighted penalty (Anthropic, "Circuits Updates - April 2024") does away with both the
unit-norm constraint and resampling, provided the decoder is frozen in both the auxiliary loss and
the penalty's weights or in neither (Rajamanoharan, LessWrong comment on the paper's post, 2024).
We freeze it in both, as the paper's auxiliary loss does; SAELens' GatedTrainingSAE freezes it in
neither, and also does not resample.
"""
from engine.sae.registry import TARGET_L0, Architecture, register

# gated's L1 weight against relu's for the same sparsity_coeff (Gated.sparsity_weight).
_GATE_WEIGHT_PER_RELU_WEIGHT = 2.0


@register
class Gated(Architecture):
    name = "gated"
    saelens_name = "gated"
    # Its sparsity term is an L1 (of the gate), whose L0 follows its weight: target_l0 steers that
    # weight as it does relu's (engine.trainer.target_l0).
    request_fields = (TARGET_L0,)
    adapts_l1_to_target_l0 = True
    state_keys = frozenset({"r_mag", "b_mag"})
    # The gate's bias decides how often a feature fires, as relu's; b_mag, the magnitude's offset
    # once open, must cover as much ground (width 48: EV 0.06 with only b_gate fast, 0.51 with both).
    fast_biases = ("b_enc", "b_mag")

    def setup(self, sae, options):
        import torch
        from torch import nn

        # Zeros, as the paper and SAELens: the magnitude path starts as the gate's own relu.
        sae.r_mag = nn.Parameter(torch.zeros(sae.d_sae))
        sae.b_mag = nn.Parameter(torch.zeros(sae.d_sae))

    def activate(self, sae, pre):
        # (x - b_dec) (W_enc * exp(r_mag)) = ((x - b_dec) W_enc) * exp(r_mag) = (pre - b_gate) * exp(r_mag):
        # the magnitude path from the gate's pre-activations, without a second matmul. b_gate's
        # gradient through it cancels, as it should: b_gate does not touch magnitudes.
        magnitude = ((pre - sae.b_enc) * sae.r_mag.exp() + sae.b_mag).relu()
        return (pre > 0).to(magnitude.dtype) * magnitude

    def sparsity_weight(self, config, d_in, *, legacy=False):
        """Twice relu's weight for the same sparsity_coeff. The L1 touches only the gate, so the kept
        magnitudes are never shrunk and a given lambda buys less sparsity than relu's: on the bundled
        MiniLM (bench/defaults.py, docs/architectures.md) relu's default weight left gated at L0 89
        with 285 of 1024 features firing on over 10% of tokens, twice it at L0 38 and 16 dense, where
        relu's default gives L0 39. So one sparsity_coeff asks both for about the same L0."""
        return _GATE_WEIGHT_PER_RELU_WEIGHT * super().sparsity_weight(config, d_in, legacy=legacy)

    def sparsity_loss(self, sae, pre, f, config):
        """The L1 of relu(pi_gate), each feature weighted by its decoder norm, which is frozen here
        as in the auxiliary loss (see the module's docstring)."""
        return (pre.relu() * sae.decoder_norms().detach()).sum(dim=-1).mean()

    def aux_loss(self, sae, x, recon, pre, trainer):
        """The paper's L_aux: reconstruct x from relu(pi_gate) through frozen copies of the decoder,
        so the gate learns which features are needed (the step function gives it no gradient).
        A mean over elements, as the trainer's MSE: weight 1 against it, as in the paper."""
        from torch.nn.functional import mse_loss

        via_gate = pre.relu() @ sae.W_dec.detach() + sae.b_dec.detach()
        return mse_loss(via_gate, x)

    def export_tensors(self, sae):
        # Folding the input scale s into W_enc and b_dec leaves the pre-activations, and so both
        # paths' biases and r_mag, unchanged (engine.sae.export).
        return {"r_mag": sae.r_mag.detach().clone(), "b_mag": sae.b_mag.detach().clone()}

    def saelens_tensors(self, weights):
        # SAELens' GatedSAE has no b_enc (it loads strictly): ours is its b_gate.
        renamed = dict(weights)
        renamed["b_gate"] = renamed.pop("b_enc")
        return renamed
