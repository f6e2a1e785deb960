"""JumpReLU SAE: f = pre * (pre > threshold) with learned per-feature thresholds and an L0 penalty
(or a target-L0 one), both trained through straight-through estimators (Rajamanoharan et al. 2024,
Gemma Scope, arXiv 2408.05147; Anthropic, "Circuits Updates - January 2025"). Decoder rows stay at
unit norm: with an L0 penalty, feature scale is free otherwise."""
import math

from engine.sae.registry import LAMBDA_PER_SPARSITY_COEFF, REFERENCE_WIDTH, TARGET_L0, Architecture, register

# Inputs have mean norm sqrt(d_in), so pre-activations are O(1); an initial 0.1 (Anthropic Jan
# 2025) and a 0.05 kernel let short runs move the thresholds, where Gemma Scope's 0.001/0.001 needs
# billions of tokens. TrainConfig's jumprelu_initial_threshold and jumprelu_bandwidth default to these.
INITIAL_THRESHOLD = 0.1
BANDWIDTH = 0.05


@register
class JumpReLU(Architecture):
    name = "jumprelu"
    saelens_name = "jumprelu"
    request_fields = (TARGET_L0,)
    unit_norm_decoder = True
    state_keys = frozenset({"log_threshold"})

    def setup(self, sae, options):
        import torch
        from torch import nn

        sae.bandwidth = float(options.get("jumprelu_bandwidth", BANDWIDTH))
        initial = float(options.get("jumprelu_initial_threshold", INITIAL_THRESHOLD))
        # Learned as logs so they stay positive (Gemma Scope).
        sae.log_threshold = nn.Parameter(torch.full((sae.d_sae,), math.log(initial)))

    def activate(self, sae, pre):
        from engine.sae.kernels import JumpReLUFunction

        # The relu matches SAELens' jumprelu; with a positive threshold it changes nothing.
        return JumpReLUFunction.apply(pre.relu(), sae.log_threshold.exp(), sae.bandwidth)

    def sparsity_loss(self, sae, pre, f, config):
        from engine.sae.kernels import StepFunction

        # Mean over tokens of the number of active features, differentiable wrt the thresholds.
        l0 = StepFunction.apply(pre, sae.log_threshold.exp(), sae.bandwidth).sum(dim=-1).mean()
        if config.target_l0:
            return (l0 / config.target_l0 - 1) ** 2
        return l0

    def sparsity_weight(self, config, d_in, *, legacy=False):
        """lambda (sparsity_coeff x 2000) is the price of one active feature for an input of
        REFERENCE_WIDTH and grows as d_in / REFERENCE_WIDTH, so the per-element weight beside the MSE
        is the same at every width. With inputs at mean norm sqrt(d_in), what an active feature is
        worth (its share of the summed squared error) grows as d_in, and so must the price of its
        firing to mean the same trade-off (the L1's price, per unit of a magnitude ~sqrt(d_in), grows
        as sqrt(d_in): Architecture.sparsity_weight). Under a fixed lambda L0 went 2.2 at width 48,
        33 at 384 and 78 at 1024 on the same planted data; under this rule 15, 33 and 21
        (bench/width_grid.py; docs/architectures.md, "Defaults across widths").
        A target L0 is a constraint, not a trade-off: its penalty (L0/target - 1)^2 has a fixed
        weight of 1 (it held L0 near the target on MiniLM and the synthetic tests), and
        sparsity_coeff does not apply to it (under every rule, the legacy one too)."""
        if config.target_l0:
            return 1.0
        if legacy:
            return super().sparsity_weight(config, d_in, legacy=True)
        return config.sparsity_coeff * LAMBDA_PER_SPARSITY_COEFF / REFERENCE_WIDTH

    def param_groups(self, sae, config, total_steps):
        """Thresholds are learned in log space, where an Adam step moves them by about the learning
        rate: at 1e-4 a threshold could not grow tenfold in fewer than ~23k steps. Their own rate
        lets them cross a few e-folds in any run (10 / total steps), and is never below the
        weights' rate, so long runs train them exactly as Gemma Scope does."""
        weights = [p for name, p in sae.named_parameters() if name != "log_threshold"]
        threshold_lr = max(config.learning_rate, 10.0 / max(total_steps, 1))
        return [{"params": weights, "base_lr": config.learning_rate},
                {"params": [sae.log_threshold], "base_lr": threshold_lr}]

    def export_tensors(self, sae):
        return {"threshold": sae.log_threshold.detach().exp().clone()}
