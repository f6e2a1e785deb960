"""The target-L0 controller for architectures whose sparsity term is an L1 (relu; any that sets
Architecture.adapts_l1_to_target_l0): the L1 weight is steered during training until L0 sits at
`target_l0`, instead of the user searching sparsity_coeff for it.

The rule, after every step past the sparsity warm-up:

    l0_ema     <- 0.99 l0_ema + 0.01 L0(batch)             (the first measured step starts it)
    multiplier <- multiplier * exp(clip(0.002 log(l0_ema / target), -0.002, +0.002))
                  unless l0_ema already moved toward the target this step
    multiplier in [1e-4, 1e4]

and the step's sparsity weight is sparsity_weight x warm-up x multiplier. It is an integral
controller in log space: too many features firing raises the weight, too few lowers it, at most
0.2% a step (500 steps an e-fold). A ReLU SAE's L0 follows its weight only as fast as Adam moves
the encoder biases (about learning_rate a step), so a faster controller winds up: measured on
synthetic data (width 48, target 32), 1% a step drove the weight to its bound while L0 was still
falling, then L0 to 0. For the same reason the weight holds still while L0 is already moving toward
the target (anti-windup). An L1's L0 falls monotonically with its weight, which is what makes a
one-knob controller enough (JumpReLU's own (L0/target - 1)^2 penalty, Anthropic "Circuits Updates -
January 2025", is the alternative for architectures with an L0 term). The EMA averages about 100 steps so one
odd batch does not swing the weight. During the warm-up the penalty is still ramping and L0 says
nothing about the weight, so the controller waits. Its state (multiplier, l0_ema) is in every
checkpoint, so a resumed run continues exactly.
"""
import math

_L0_EMA_DECAY = 0.99
_GAIN = 0.002
_MAX_LOG_STEP = 0.002
_MIN_MULTIPLIER, _MAX_MULTIPLIER = 1e-4, 1e4


def active(architecture, config) -> bool:
    return bool(config.target_l0) and architecture.adapts_l1_to_target_l0


def update(state, l0: float, *, target: float, warming_up: bool) -> None:
    """Fold one step's measured L0 into the controller's state (RunState.l0_ema, sparsity_multiplier)."""
    if warming_up:
        return
    previous = state.l0_ema
    state.l0_ema = l0 if previous is None else _L0_EMA_DECAY * previous + (1 - _L0_EMA_DECAY) * l0
    error = math.log(max(state.l0_ema, 1e-3) / target)
    if previous is not None and (state.l0_ema - previous) * error < 0:
        return  # already moving toward the target: pushing harder would overshoot (anti-windup)
    log_step = max(-_MAX_LOG_STEP, min(_MAX_LOG_STEP, _GAIN * error))
    state.sparsity_multiplier = min(_MAX_MULTIPLIER, max(_MIN_MULTIPLIER, state.sparsity_multiplier * math.exp(log_step)))
