"""How relu, jumprelu and gated defaults depend on the input width (issue 17, item 4): engine-level
`train_sae` on the planted-dictionary activations of `bench/defaults.py --synthetic`, evaluated by
`engine.evaluation.reconstruction.evaluate_sae` on the held-out rows, with the count of `engine.run.verdict` warnings.

    OMP_NUM_THREADS=1 .venv/bin/python bench/width_grid.py --widths 48,128,384 --steps 1000
    .venv/bin/python bench/width_grid.py --widths 48 --rows relu --sparsity-coeff 0.001,0.01

--candidate tries a rule this version does not have, patched into the registry for this process
only (a bench, never the service):
  before       the rules before 2026-12-05: one lambda at every width (the per-element weight
               lambda / d_in, for the L1 and JumpReLU's L0 alike) and every bias at the plain
               learning rate;
  bias-lr:T    the fast biases travel T instead of registry.BIAS_TRAVEL (relu's b_enc, gated's
               b_enc and b_mag; an architecture without fast biases gets b_enc).
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

def patch(candidate: str) -> None:
    from engine.sae import registry
    from engine.sae.registry import LAMBDA_PER_SPARSITY_COEFF

    if candidate == "before":
        def fixed_lambda(self, config, d_in, *, legacy=False):
            if config.target_l0 and self.name == "jumprelu":
                return 1.0
            weight = config.sparsity_coeff if legacy else config.sparsity_coeff * LAMBDA_PER_SPARSITY_COEFF / d_in
            return weight * (2.0 if self.name == "gated" else 1.0)
        for architecture in registry.all_architectures():
            type(architecture).fast_biases = ()
            type(architecture).sparsity_weight = fixed_lambda
    elif candidate.startswith("bias-lr:"):
        registry.BIAS_TRAVEL = float(candidate.split(":", 1)[1])
        for architecture in registry.all_architectures():
            if not architecture.fast_biases:
                type(architecture).fast_biases = ("b_enc",)
    elif candidate != "none":
        raise SystemExit(f"unknown candidate {candidate!r}: none, before or bias-lr:T")


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
    from engine.evaluation.reconstruction import evaluate_sae
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
                        config = TrainConfig(cpu_bf16="off", hidden_dim=options.hidden_dim, architecture=architecture,
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
