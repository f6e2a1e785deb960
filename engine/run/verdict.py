"""Warnings about a trained SAE: a run can complete and still hand back an SAE that is no use (every
feature silent, or most firing on most tokens, or a reconstruction worse than the mean). Each
warning says what is wrong and what to change; the result document, the job page and `manage.py
train` show them, so a degenerate SAE never passes as a good one in silence (issue 17).

A plain function of the held-out evaluation (engine.evaluation.reconstruction) and the run's config.
"""
from engine.sae import taking

# Explained variance below this reconstructs little more than b_dec does: the SAE tells almost
# nothing about the activations (trained SAEs in our tables sit at 0.6-0.99).
MIN_EXPLAINED_VARIANCE = 0.2
# Fewer active features per token than one: most tokens get no feature at all.
MIN_L0 = 1.0
# Share of features dead (silent for the dead window) or dense (firing on >10% of tokens) past
# which the dictionary is mostly wasted: half of it does not take part in sparse codes.
MAX_DEAD_SHARE = 0.5
MAX_DENSE_SHARE = 0.5
# L0 this close to hidden_dim is no sparse code at all.
MAX_L0_SHARE = 0.5


def warnings(evaluation: dict, config) -> list[str]:
    """Sentences, each what is wrong and what to change; [] for a usable SAE."""
    found = []
    l0, ev = evaluation["l0"], evaluation["explained_variance"]
    hidden = config.hidden_dim
    fix_denser, fix_sparser = _fixes(config)
    if l0 < MIN_L0:
        what = "every feature is silent" if l0 == 0 else "most tokens get no active feature"
        found.append(f"L0 is {l0:.2f}: {what}; {fix_denser}.")
    elif l0 >= MAX_L0_SHARE * hidden:
        found.append(f"L0 is {l0:.0f} of {hidden} features: the code is not sparse; {fix_sparser}.")
    if ev < MIN_EXPLAINED_VARIANCE:
        found.append(f"Explained variance is {ev:.2f}: the SAE reconstructs little of the activations; "
                     f"{fix_denser if l0 < MIN_L0 * 4 else 'train longer (max_epochs) or raise hidden_dim'}.")
    dead = evaluation.get("dead_features", 0)
    if dead > MAX_DEAD_SHARE * hidden:
        found.append(f"{dead} of {hidden} features are dead: {fix_denser}, or lower hidden_dim.")
    dense = evaluation.get("dense_features", 0)
    if dense > MAX_DENSE_SHARE * hidden:
        found.append(f"{dense} of {hidden} features fire on more than 10% of tokens: {fix_sparser}.")
    return found


def _fixes(config) -> tuple[str, str]:
    """What to change for more active features, and for fewer, in this config's own fields."""
    if config.architecture in taking("k"):
        return f"raise k (now {config.k})", f"lower k (now {config.k})"
    if config.target_l0:
        return (f"raise target_l0 (now {config.target_l0:g})", f"lower target_l0 (now {config.target_l0:g})")
    coeff = f"sparsity_coeff (now {config.sparsity_coeff:g})"
    also = " or ask for target_l0" if config.architecture in taking("target_l0") else ""
    return f"lower {coeff}{also}", f"raise {coeff}{also}"
