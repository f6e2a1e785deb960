"""The run's plan, fixed before its first step: which rows are held out, tokens per step (with the
step floor), the sparsity term's weight, and the dead-feature window."""
import math
from dataclasses import replace

from engine import sae as architectures
from engine.trainer.config import TrainConfig

# A feature silent for this many tokens is dead (Gao et al. 2024 use 10M tokens); shorter runs use
# one pass over the training rows instead.
_DEFAULT_DEAD_WINDOW_TOKENS = 10_000_000
# The smallest SAE batch that min_steps may shrink to: below this a step is mostly noise.
_MIN_BATCH_TOKENS = 64


def dead_window_tokens(config: TrainConfig, n_tokens: int) -> int:
    return int(config.dead_window_tokens or min(_DEFAULT_DEAD_WINDOW_TOKENS, n_tokens))


def min_steps_for(config: TrainConfig) -> int:
    """The fewest optimizer steps the run should take (TrainConfig.min_steps, min_update_travel); 0 = off."""
    if config.min_steps <= 0:
        return 0
    return max(config.min_steps, math.ceil(config.min_update_travel / config.learning_rate))


def token_budget(config: TrainConfig, n_tokens: int) -> int | None:
    """Tokens the run trains on when a training_tokens budget ends it before max_epochs passes over
    its n_tokens training rows; None when the passes end it."""
    if config.training_tokens is None or config.training_tokens >= n_tokens * config.max_epochs:
        return None
    return int(config.training_tokens)


def batch_tokens(config: TrainConfig, n_tokens: int) -> int:
    batch = min(config.sae_batch_tokens, n_tokens)
    min_steps = min_steps_for(config)
    budget = token_budget(config, n_tokens)
    if min_steps > 0 and budget is not None:
        # The step floor shrinks batches to reach its steps within the budget; it never adds tokens.
        batch = min(batch, max(_MIN_BATCH_TOKENS, budget // min_steps))
    elif min_steps > 0:
        steps_per_epoch = math.ceil(min_steps / config.max_epochs)
        batch = min(batch, max(_MIN_BATCH_TOKENS, n_tokens // steps_per_epoch))
    return max(1, batch)


def total_steps(config: TrainConfig, n_tokens: int, batch: int, steps_per_epoch: int) -> int:
    """Steps of the whole run: max_epochs epochs, or up to where the budget ends it."""
    budget = token_budget(config, n_tokens)
    if budget is None:
        return steps_per_epoch * config.max_epochs
    epochs, rest = divmod(budget, n_tokens)
    return epochs * steps_per_epoch + math.ceil(rest / batch)


def run_constants(config: TrainConfig, n_tokens: int, d_in: int, saved) -> tuple[int, float]:
    """The run's batch size and sparsity weight: a resumed checkpoint's own (engine.trainer.checkpoint
    reads them, whatever rules wrote it), or this version's rules for a new run."""
    architecture = architectures.get(config.architecture)
    if saved is None:
        return batch_tokens(config, n_tokens), architecture.sparsity_weight(config, d_in)
    if saved.batch_tokens is not None:
        return saved.batch_tokens, saved.sparsity_weight
    # Written before checkpoints kept them: the rules of then, the batch from min_steps alone and
    # sparsity_coeff as the per-element weight.
    return (batch_tokens(replace(config, min_update_travel=0.0), n_tokens),
            architecture.sparsity_weight(config, d_in, legacy=True))
