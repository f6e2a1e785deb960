"""Training from an activations file, ours against SAELens, as whole processes (issue 25, item 3):
`manage.py train --activations` against a script that trains SAELens' TopK SAE with its
`SAETrainer` on the same rows, at the same batch, steps, width, k, learning rate and schedule.

The rows: planted sparse features, as SAELens' synthetic benchmarks draw them (`--features`
unit directions in `--d-in`, each row the sum of a few of them with uniform magnitudes, plus a
fixed offset), written once to `train.npy` and `heldout.npy`. Ours trains on the file less its 5%
held-out tail, with the service's defaults (min_steps 1000 may shrink its batch: SAELens then gets
the batch ours used and the same rows). Both SAEs are loaded from their SAELens folders and scored
by one function on `heldout.npy` (EV, L0).

Each side is timed from its process's start to its exit (the interpreter, imports, reading the
file, training, whatever it does after); each also says how long its training loop took. After
training ours evaluates the held-out rows, analyses the last MISTUDIO_ANALYSIS_TOKENS rows'
features, writes the SAE, its SAELens export and the metadata; SAELens saves the SAE.

Runs in the bench venv from the repository root (the app's .venv trains ours):
    .venv-bench/bin/python bench/from_activations.py
    .venv-bench/bin/python bench/from_activations.py --d-in 256 --d-sae 4096 --k 32 --batch 256
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-in", type=int, default=128)
    parser.add_argument("--features", type=int, default=1024, help="planted directions")
    parser.add_argument("--active", type=float, default=5.0, help="mean planted features per row")
    parser.add_argument("--rows", type=int, default=250_000, help="training file rows (5%% of them held out by ours)")
    parser.add_argument("--heldout-rows", type=int, default=10_000)
    parser.add_argument("--d-sae", type=int, default=1024)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4096, help="asked of ours; SAELens gets what ours used")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--repeats", type=int, default=2, help="alternated pairs")
    parser.add_argument("--app-python", type=Path, default=REPO / ".venv" / "bin" / "python")
    parser.add_argument("--saelens-worker", nargs=3, metavar=("TRAIN", "OUT", "SETTINGS"), help=argparse.SUPPRESS)
    return parser.parse_args()


def write_data(args, folder: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(args.features, args.d_in)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    offset = rng.normal(size=args.d_in).astype(np.float32)
    paths = []
    for name, n in (("train", args.rows), ("heldout", args.heldout_rows)):
        out = np.empty((n, args.d_in), dtype=np.float32)
        for lo in range(0, n, 8192):
            hi = min(n, lo + 8192)
            on = rng.random((hi - lo, args.features)) < args.active / args.features
            out[lo:hi] = (on * rng.random((hi - lo, args.features))).astype(np.float32) @ directions + offset
        np.save(folder / f"{name}.npy", out)
        paths.append(folder / f"{name}.npy")
    return paths[0], paths[1]


def ours(args, folder: Path, train: Path) -> dict:
    env = {**os.environ, "MISTUDIO_DEBUG": "1", "MISTUDIO_DATA_DIR": str(folder / "data"),
           "DATABASE_URL": f"sqlite:///{folder / 'db.sqlite3'}", "OMP_NUM_THREADS": "2"}
    subprocess.run([str(args.app_python), "manage.py", "migrate", "-v0"], cwd=REPO, env=env, check=True)
    started = time.monotonic()
    done = subprocess.run([str(args.app_python), "manage.py", "train", "--activations", str(train), "--no-progress",
                           "--architecture", "topk", "--hidden-dim", str(args.d_sae), "--k", str(args.k),
                           "--learning-rate", str(args.lr), "--sae-batch-tokens", str(args.batch), "--max-epochs", "1",
                           "--min-loss", "0"], cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode:
        raise SystemExit(f"manage.py train failed:\n{done.stderr[-3000:]}")
    out = done.stdout
    result = json.loads(out[out.rindex("\n{") + 1:] if "\n{" in out else out[out.index("{"):])
    stats = result["training_stats"]
    return {"wall_s": wall, "training_s": stats["training_time_seconds"], "tokens": stats["training_tokens"],
            "batch": stats["sae_batch_tokens_used"], "folder": Path(result["exports"]["saelens"])}


def saelens(args, folder: Path, train: Path, batch: int, tokens: int) -> dict:
    settings = json.dumps({"d_sae": args.d_sae, "k": args.k, "lr": args.lr, "batch": batch, "tokens": tokens})
    started = time.monotonic()
    done = subprocess.run([sys.executable, __file__, "--saelens-worker", str(train), str(folder / "saelens"), settings],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    wall = time.monotonic() - started
    if done.returncode:
        raise SystemExit(f"the SAELens process failed:\n{done.stderr[-3000:]}")
    return {"wall_s": wall, **json.loads(done.stdout.strip().splitlines()[-1]), "folder": folder / "saelens"}


def saelens_worker(train: str, out: str, settings: str) -> None:
    """One SAELens process: read the rows, train, save. Its first `tokens` rows, in shuffled batches."""
    import _setup
    import torch
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    _setup.set_threads()
    s = json.loads(settings)
    rows = torch.from_numpy(np.load(train)[: s["tokens"]])
    batch, n = s["batch"], s["tokens"] // s["batch"] * s["batch"]
    steps = n // batch
    config = SAETrainerConfig(
        total_training_samples=n, train_batch_size_samples=batch, lr=s["lr"], lr_end=s["lr"],
        lr_scheduler_name="constant", lr_warm_up_steps=round(0.01 * steps), lr_decay_steps=round(0.2 * steps),
        device="cpu", n_batches_for_norm_estimate=max(1, 8192 // batch), logger=LoggingConfig(log_to_wandb=False))
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=rows.shape[1], d_sae=s["d_sae"], k=s["k"], dtype="float32",
                                                device="cpu", normalize_activations="expected_average_only_in"))

    def batches():
        generator = torch.Generator().manual_seed(0)
        while True:  # the norm estimate draws a few batches first
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, batch):
                yield rows[order[start : start + batch]]

    started = time.monotonic()
    torch.manual_seed(0)
    trained = SAETrainer(cfg=config, sae=sae, data_provider=batches()).fit()
    training = time.monotonic() - started
    trained.save_inference_model(out)
    print(json.dumps({"training_s": training, "tokens": n, "batch": batch}))


def score(folder: Path, heldout: np.ndarray) -> dict:
    import torch
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(folder), device="cpu")
    x = torch.from_numpy(heldout)
    with torch.no_grad():
        codes = sae.encode(x)
        recon = sae.decode(codes)
    ev = 1 - float(((x - recon) ** 2).sum() / ((x - x.mean(dim=0)) ** 2).sum())
    return {"ev": ev, "l0": float((codes > 0).float().sum(dim=1).mean())}


def main() -> None:
    args = parse_args()
    if args.saelens_worker:
        return saelens_worker(*args.saelens_worker)
    import _setup

    with tempfile.TemporaryDirectory(prefix="mistudio-from-activations-") as tmp:
        tmp = Path(tmp)
        train, heldout_path = write_data(args, tmp)
        heldout = np.load(heldout_path)
        rows = []
        for repeat in range(args.repeats):
            mine = ours(args, tmp / f"ours{repeat}", train)
            theirs = saelens(args, tmp / f"saelens{repeat}", train, mine["batch"], mine["tokens"])
            for side, r in (("ours", mine), ("SAELens", theirs)):
                row = {"side": side, "repeat": repeat, **{k: v for k, v in r.items() if k != "folder"}, **score(r["folder"], heldout)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\nmachine: {_setup.machine()}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{args.rows:,} rows of d_in {args.d_in} ({args.features} planted directions, ~{args.active:g} a row, an offset); "
          f"TopK d_sae {args.d_sae}, k {args.k}, lr {args.lr:g}, one pass\n")
    print(f"{'side':8s} {'tokens':>8s} {'batch':>6s} {'steps':>6s} {'wall s':>7s} {'train s':>8s} {'tok/s':>8s} {'EV':>6s} {'L0':>5s}")
    for r in rows:
        print(f"{r['side']:8s} {r['tokens']:8,d} {r['batch']:6d} {r['tokens'] // r['batch']:6d} {r['wall_s']:7.1f} "
              f"{r['training_s']:8.1f} {r['tokens'] / r['wall_s']:8,.0f} {r['ev']:6.3f} {r['l0']:5.1f}")
    for repeat in range(args.repeats):
        mine, theirs = (r for r in rows if r["repeat"] == repeat)
        ratio = (mine["tokens"] / mine["wall_s"]) / (theirs["tokens"] / theirs["wall_s"])
        loop = (mine["tokens"] / mine["training_s"]) / (theirs["tokens"] / theirs["training_s"])
        print(f"pair {repeat}: ours/SAELens tokens/s, whole process {ratio:.2f}x, training loop {loop:.2f}x")


if __name__ == "__main__":
    main()
