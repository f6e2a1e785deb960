"""How the learning rate and the sparsity penalty change over a run's steps."""
from engine.trainer.config import TrainConfig


def lr_factor(config: TrainConfig, step: int, total: int) -> float:
    """Linear warm-up, then constant, then linear decay to 0 (warm-up: Conerly et al., Anthropic
    "Circuits Updates - April 2024"; final decay over the last 20%: same update and Gao et al. 2024)."""
    factor = 1.0
    warmup = round(config.lr_warmup_fraction * total)
    if warmup > 0 and step < warmup:
        factor = (step + 1) / warmup
    decay = round(config.lr_decay_fraction * total)
    if decay > 0 and step >= total - decay:
        factor = min(factor, (total - step) / decay)
    return factor


def sparsity_warmup(config: TrainConfig, step: int, total: int) -> float:
    """The penalty ramps up from 0 so features form before it prunes them (Anthropic "Circuits
    Updates - April 2024": L1 warm-up over the first 5% of steps; Anthropic Jan 2025 for JumpReLU)."""
    warmup = round(config.sparsity_warmup_fraction * total)
    return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
