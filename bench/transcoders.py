"""Issue 17: a transcoder and a skip transcoder at one layer of SmolLM2-135M-Instruct against a TopK
SAE on that layer's MLP output, each a whole `manage.py train` process (the app's .venv), same
corpus, layer, d_sae, k, batch, learning rate and epochs:

- `transcoder` / `skip_transcoder`: read the MLP's input after its norm (mlp_in), predict the MLP's
  output (mlp_out);
- `topk` on `mlp_out`: reconstructs the MLP's output from itself (an upper bound on what a code of
  k features keeps of it, not a replacement of the MLP).

Printed from each job's own result document: explained variance of the MLP output on the held-out
rows (1 - FVU), L0, dead features, and next-token loss recovered with the MLP's output replaced
(the transcoder's prediction from the MLP's input of the same forward; the SAE's reconstruction of
the output) against the MLP's output zero-ablated. Writes a JSON under --out.

    .venv/bin/python bench/transcoders.py [--layer 10] [--d-sae 2304] [--k 32] [--epochs 20]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from _setup import TrainFailed, run_train

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
CONTENDERS = (("transcoder", "mlp_out"), ("skip_transcoder", "mlp_out"), ("topk", "mlp_out"))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=MODEL_NAME, help="what `manage.py train --model` gets")
    parser.add_argument("--corpus", type=Path, default=REPO / "samples" / "demo_corpus.txt")
    parser.add_argument("--layer", type=int, default=10, help="of 30")
    parser.add_argument("--d-sae", type=int, default=2304, help="4 x d_model")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=256, help="SAE batch, tokens")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mistudio-bench" / "results")
    return parser.parse_args()


def env_for(folder: Path) -> dict:
    return {**os.environ, "MISTUDIO_DEBUG": "1", "MISTUDIO_DATA_DIR": str(folder / "data"),
            "MISTUDIO_MODELS_DIR": str(folder / "models"), "DATABASE_URL": f"sqlite:///{folder / 'db.sqlite3'}",
            # the epochs asked, not the floor of 1,000 steps
            "MISTUDIO_MIN_SAE_STEPS": "0", "OMP_NUM_THREADS": "2"}


def train(args, folder: Path, architecture: str, hook_point: str) -> dict:
    command = [sys.executable, "manage.py", "train", "--model", args.model, "--corpus", str(args.corpus), "--no-progress",
               "--layer-number", str(args.layer), "--architecture", architecture, "--k", str(args.k),
               "--hook-point", hook_point, "--hidden-dim", str(args.d_sae), "--max-epochs", str(args.epochs),
               "--min-loss", "0", "--max-sequence-length", str(args.context), "--sae-batch-tokens", str(args.batch),
               "--learning-rate", str(args.lr), "--cache-activations", "always"]
    try:
        result, wall = run_train(command, cwd=REPO, env=env_for(folder), label=architecture)
    except TrainFailed as failed:
        raise SystemExit(str(failed)) from None
    evaluation = result["evaluation"]
    return {"architecture": architecture, "hook_point": hook_point, "wall_s": round(wall, 1),
            "explained_variance": evaluation["explained_variance"], "l0": evaluation["l0"],
            "dead_features": evaluation["dead_features"], "ce_loss_clean": evaluation["ce_loss_clean"],
            "ce_loss_with_sae": evaluation["ce_loss_with_sae"], "ce_loss_zero_ablation": evaluation["ce_loss_zero_ablation"],
            "ce_loss_recovered": evaluation["ce_loss_recovered"], "kl_div_score": evaluation["kl_div_score"],
            "eval_tokens": evaluation["eval_tokens"], "training_tokens": result["training_stats"]["training_tokens"]}


def main() -> None:
    args = parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mistudio-transcoders-") as tmp:
        folder = Path(tmp)
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO, env=env_for(folder), check=True)
        for architecture, hook_point in CONTENDERS:
            row = train(args, folder, architecture, hook_point)
            rows.append(row)
            print(f"{architecture:16s} {hook_point:8s} EV {row['explained_variance']:.3f}  L0 {row['l0']:.1f}  "
                  f"dead {row['dead_features']}  CE recovered {row['ce_loss_recovered']:.3f}  "
                  f"(clean {row['ce_loss_clean']:.3f}, spliced {row['ce_loss_with_sae']:.3f}, "
                  f"ablated {row['ce_loss_zero_ablation']:.3f})  {row['wall_s']:.0f} s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"transcoders_{stamp}.json"
    path.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
