"""The target-L0 controller for architectures whose sparsity term is an L1 (relu; any that sets
Architecture.adapts_l1_to_target_l0): the L1 weight is steered during training until L0 sits at
`target_l0`, instead of the user searching sparsity_coeff for it.

The rule, after every step past the sparsity warm-up:

    l0_ema     <- an average of L0 over the last 0.01 / learning_rate steps (100 at 1e-4)
    multiplier <- multiplier * exp(20 learning_rate clip(log(l0_ema / target), -1, +1))
                  unless, at the pace log(l0_ema / target) shrank this step, L0 reaches the
                  target before the run ends
    multiplier in [1e-4, 1e4]

and the step's sparsity weight is sparsity_weight x warm-up x multiplier. It is an integral
controller in log space: too many features firing raises the weight, too few lowers it, at most
20 x learning_rate a step (0.2% at the default 1e-4: 500 steps an e-fold). A ReLU SAE's L0 follows
its weight only as fast as Adam moves the encoder biases (about their learning rate a step), so the
rate is tied to the learning rate, and a faster controller winds up: measured on synthetic data (width 48, target 32,
learning rate 1e-4, before the biases had their own rate), 1% a step drove the weight to its bound while L0 was still falling, then L0
to 0; 0.2% held it at 32. For the same reason the weight holds still while L0 already approaches the
target fast enough to reach it before the run ends (anti-windup); a pace too slow for that (a
weight far too weak) lets the controller push. An L1's L0 falls monotonically with its weight, which is what makes a
one-knob controller enough (JumpReLU's own (L0/target - 1)^2 penalty, Anthropic "Circuits Updates -
January 2025", is the alternative for architectures with an L0 term). The average keeps one odd batch from swinging the
weight. During the warm-up the penalty is still ramping and L0 says
nothing about the weight, so the controller waits. Its state (multiplier, l0_ema) is in every
checkpoint, so a resumed run continues exactly.
"""
import math

# The L0 average's window, in steps, per unit of learning rate: 100 steps at 1e-4, 10 at 1e-3. The
# SAE answers a change of weight in about as many steps as its biases need to move, ~1/learning_rate
# times the distance, so a window tied to the learning rate lags the same share of that answer.
_EMA_STEPS_PER_LEARNING_RATE = 0.01
# The controller's rate per step, per unit of learning rate: 0.002 at the default 1e-4.
_RATE_PER_LEARNING_RATE = 20.0
_MIN_MULTIPLIER, _MAX_MULTIPLIER = 1e-4, 1e4


def active(architecture, config) -> bool:
    return bool(config.target_l0) and architecture.adapts_l1_to_target_l0


def update(state, l0: float, *, target: float, learning_rate: float, warming_up: bool, steps_left: int) -> None:
    """Fold one step's measured L0 into the controller's state (RunState.l0_ema, sparsity_multiplier)."""
    if warming_up:
        return
    previous = state.l0_ema
    decay = 1.0 - 1.0 / max(2.0, _EMA_STEPS_PER_LEARNING_RATE / learning_rate)
    state.l0_ema = l0 if previous is None else decay * previous + (1 - decay) * l0
    error = math.log(max(state.l0_ema, 1e-3) / target)
    rate = _RATE_PER_LEARNING_RATE * learning_rate
    if previous is not None:
        closing = abs(math.log(max(previous, 1e-3) / target)) - abs(error)  # this step, in log units
        if closing > 0 and abs(error) <= closing * steps_left:
            return  # L0 reaches the target within the run at its present pace: pushing harder would overshoot
    log_step = rate * max(-1.0, min(1.0, error))
    state.sparsity_multiplier = min(_MAX_MULTIPLIER, max(_MIN_MULTIPLIER, state.sparsity_multiplier * math.exp(log_step)))
