"""Where a one-pass job's time goes: `manage.py train --activations` on random activations, as a
whole process, split into the training loop, the feature analysis and the rest (start-up,
loading, evaluation, export), from the job's own result. Runs in the app's .venv:

    .venv/bin/python bench/after_training.py                        # 300,000 x 256, topk 4096, k 32
    .venv/bin/python bench/after_training.py --rows 409600 --d-in 128 --hidden-dim 2048
    .venv/bin/python bench/after_training.py --repo /path/to/another/checkout   # the same for it

The step floor is off (MISTUDIO_MIN_SAE_STEPS=0): one epoch of --sae-batch-tokens steps.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(repo: Path, activations: Path, folder: Path, args) -> dict:
    env = {**os.environ, "MISTUDIO_DEBUG": "1", "MISTUDIO_DATA_DIR": str(folder / "data"),
           "MISTUDIO_MODELS_DIR": str(folder / "models"), "DATABASE_URL": f"sqlite:///{folder / 'db.sqlite3'}",
           "MISTUDIO_MIN_SAE_STEPS": "0"}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=repo, env=env, check=True)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "manage.py", "train", "--activations", str(activations), "--architecture", "topk",
         "--k", str(args.k), "--hidden-dim", str(args.hidden_dim), "--max-epochs", "1",
         "--sae-batch-tokens", str(args.sae_batch_tokens), "--no-progress"],
        cwd=repo, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"manage.py train failed in {repo}:\n{done.stderr[-3000:]}")
    out = done.stdout
    result = json.loads(out[out.rindex("\n{") + 1 if "\n{" in out else out.index("{"):])
    training = result["training_stats"]["training_time_seconds"]
    analysis = job_analysis_seconds(repo, env, result["job_id"])  # on the job row, not in the result document
    return {"wall": wall, "training": training, "analysis": analysis, "rest": wall - training - analysis}


def job_analysis_seconds(repo, env, job_id) -> float:
    code = ("import django, json; django.setup(); from training.models import TrainingJob; "
            f"print(json.dumps(TrainingJob.objects.get(pk='{job_id}').features))")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True,
                         env={**env, "DJANGO_SETTINGS_MODULE": "mistudio.settings"}).stdout
    return float(json.loads(out.strip().splitlines()[-1])["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--d-in", type=int, default=256)
    parser.add_argument("--hidden-dim", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--sae-batch-tokens", type=int, default=4096)
    parser.add_argument("--repo", type=Path, action="append", help="checkouts to run (default: this one); repeat to compare")
    args = parser.parse_args()
    import numpy as np

    repos = args.repo or [REPO]
    with tempfile.TemporaryDirectory(prefix="mistudio-after-training-") as tmp:
        activations = Path(tmp) / "activations.npy"
        np.save(activations, np.random.default_rng(0).normal(size=(args.rows, args.d_in)).astype(np.float32))
        print(f"{args.rows:,} x {args.d_in} float32, topk {args.hidden_dim} k {args.k}, "
              f"{args.sae_batch_tokens} tokens per step, one epoch")
        for i, repo in enumerate(repos):
            timings = run(repo.resolve(), activations, Path(tmp) / f"run{i}", args)
            share = (timings["wall"] - timings["training"]) / timings["wall"]
            print(f"{repo}: {timings['wall']:.1f} s in all: training loop {timings['training']:.1f} s, analysis "
                  f"{timings['analysis']:.1f} s, the rest (start-up, loading, evaluation, export) "
                  f"{timings['rest']:.1f} s; outside the loop {share:.0%}")


if __name__ == "__main__":
    main()
