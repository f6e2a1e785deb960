"""How relu, jumprelu and gated defaults depend on the input width (issue 17, item 4): engine-level
`train_sae` on the planted-dictionary activations of `bench/defaults.py --synthetic`, evaluated by
`engine.evaluate.evaluate_sae` on the held-out rows, with the count of `engine.run.verdict` warnings.

    OMP_NUM_THREADS=1 .venv/bin/python bench/width_grid.py --widths 48,128,384 --steps 1000
    .venv/bin/python bench/width_grid.py --widths 48 --rows relu --sparsity-coeff 0.001,0.01

--candidate tries a rule this version does not have, patched into the registry for this process
only (a bench, never the service):
  sqrt         the sparsity weight proportional to 1/sqrt(d_in) instead of 1/d_in, equal at 384;
  bias-lr:T    the encoder bias learns at max(learning_rate, T / total steps), as jumprelu's
               thresholds do (engine/sae/jumprelu.py), so it can travel T in any run.
Every run prints one JSON line.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

MINILM_WIDTH = 384  # the bundled model's width, where a candidate rule must change nothing


def patch(candidate: str) -> None:
    from engine.sae.registry import LAMBDA_PER_SPARSITY_COEFF, Architecture

    if candidate == "sqrt":
        def sqrt_weight(self, config, d_in, *, legacy=False):
            if legacy:
                return config.sparsity_coeff
            return config.sparsity_coeff * LAMBDA_PER_SPARSITY_COEFF / (MINILM_WIDTH * d_in) ** 0.5
        Architecture.sparsity_weight = sqrt_weight
    elif candidate.startswith("bias-lr:"):
        travel = float(candidate.split(":", 1)[1])

        def param_groups(self, sae, config, total_steps):
            rest = [p for name, p in sae.named_parameters() if name != "b_enc"]
            bias_lr = max(config.learning_rate, travel / max(total_steps, 1))
            return [{"params": rest, "base_lr": config.learning_rate}, {"params": [sae.b_enc], "base_lr": bias_lr}]
        Architecture.param_groups = param_groups  # jumprelu keeps its own groups
    elif candidate != "none":
        raise SystemExit(f"unknown candidate {candidate!r}: none, sqrt or bias-lr:T")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", default="48,128,384,1024")
    parser.add_argument("--offsets", default="none,constant")
    parser.add_argument("--rows", default="relu,jumprelu,gated")
    parser.add_argument("--hidden-dim", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=1000, help="min_steps, with min_update_travel 0")
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--sparsity-coeff", default="0.001")
    parser.add_argument("--candidate", default="none")
    options = parser.parse_args()

    import numpy as np
    import torch

    import defaults
    from engine.evaluate import evaluate_sae
    from engine.run.verdict import warnings
    from engine.trainer import TrainConfig, train_sae

    torch.set_num_threads(1)
    patch(options.candidate)
    defaults.synthetic_tokens = lambda width: options.tokens
    with tempfile.TemporaryDirectory() as tmp:
        for width in (int(w) for w in options.widths.split(",")):
            for offset in options.offsets.split(","):
                x = np.load(defaults.synthetic_activations(Path(tmp) / f"{width}_{offset}.npy", width, offset))
                for architecture in options.rows.split(","):
                    for coeff in (float(c) for c in options.sparsity_coeff.split(",")):
                        started = time.time()
                        config = TrainConfig(hidden_dim=options.hidden_dim, architecture=architecture,
                                             sparsity_coeff=coeff, min_steps=options.steps, min_update_travel=0.0)
                        result = train_sae(x, config)
                        start, stop = result.heldout_rows
                        evaluation = evaluate_sae(result.sae, x[start:stop], scaling_factor=result.scaling_factor)
                        print(json.dumps({
                            "candidate": options.candidate, "width": width, "offset": offset,
                            "architecture": architecture, "sparsity_coeff": coeff, "steps": options.steps,
                            "l0": round(evaluation["l0"], 1), "ev": round(evaluation["explained_variance"], 3),
                            "dead": evaluation.get("dead_features"), "dense": evaluation.get("dense_features"),
                            "warnings": len(warnings(evaluation, config)), "seconds": round(time.time() - started),
                        }), flush=True)


if __name__ == "__main__":
    main()
