"""Our SAEs and SAELens' on activations with a known hierarchy of features (issue 17).

SAELens' `sae_lens.synthetic` draws activations from ground-truth features (`SyntheticModel`):
a forest of parent features whose children fire only with them (`HierarchyConfig`; the children
of a parent are mutually exclusive by default, one at a time), Zipfian firing probabilities
compensated for the hierarchy, unit feature directions plus a bias. The script

1. writes `train.npy` (hidden activations) and `heldout.npy` + `heldout_features.npz` (the held-out
   rows and their ground-truth feature activations, sparse) into its folder;
2. trains ours as a user would, one `manage.py train --activations train.npy` process per
   architecture in the app's .venv (its own data folder and SQLite database), and loads each
   job's SAELens export with `sae_lens.SAE.load_from_disk`; an architecture that the app's
   `manage.py train --help` does not list is skipped with a message;
3. trains SAELens' own SAE of the same architecture (its `SAETrainer` on an in-memory iterator over
   the same rows ours trained on) at equal width, k, batch, learning rate, schedule and tokens, and
   saves it with `save_inference_model`;
4. scores every SAE the same way, `eval_sae_on_synthetic_data` replaying the held-out rows (EV, L0,
   dead latents, MCC, per-latent F1 as the synthetic module defines them), plus a measure of
   feature absorption the module does not have (below).

Absorption (Chanin et al. 2024, "A is for Absorption", arXiv 2409.14507): a parent's latent stops
firing where a child fires, the child's latent having absorbed the parent's direction. For every
parent feature, the latent whose decoder row is closest to its direction (|cosine|, as the
module's F1 matches latents) is asked on the held-out rows where the parent is active: the share of
those rows with a child also active where the latent fires ("parent recall with a child"), and
`absorption` = 1 - that, averaged over parents. Matryoshka SAEs (Bussmann et al. 2025,
arXiv 2503.17547) are meant to lower it.

Runs in the bench venv from the repository root (18 minutes on the 2-core machine with the cores
shared, load 10; the defaults give ours 1,113 steps, above its 1,000-step floor):
    .venv-bench/bin/python bench/synthetic_hierarchy.py
    .venv-bench/bin/python bench/synthetic_hierarchy.py --ours batchtopk --saelens batchtopk,matryoshka_batchtopk
Exit 1 when a side fails (a skipped architecture is no failure).
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

from _setup import run_train

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
ARCHITECTURES = ("batchtopk", "matryoshka_batchtopk")
GENERATION_CHUNK = 4096  # rows drawn at once: the generator works on dense [rows, features] tensors


# --- the ground truth --------------------------------------------------------------------------

def synthetic_model(args):
    from sae_lens.synthetic import HierarchyConfig, SyntheticModel, SyntheticModelConfig

    hierarchy = HierarchyConfig(total_root_nodes=args.roots, branching_factor=args.branching, max_depth=args.depth,
                                mutually_exclusive_portion=args.mutually_exclusive, compensate_probabilities=True)
    return SyntheticModel(SyntheticModelConfig(num_features=args.features, hidden_dim=args.d_in,
                                               hierarchy=hierarchy, seed=args.seed))


def parents_and_children(model) -> dict[int, list[int]]:
    """Every feature that has children -> its children's feature indices."""
    found: dict[int, list[int]] = {}
    stack = list(model.hierarchy.roots)
    while stack:
        node = stack.pop()
        if node.children:
            found[node.feature_index] = [child.feature_index for child in node.children]
            stack.extend(node.children)
    return found


def level_widths(model, d_sae: int) -> list[int]:
    """Matryoshka widths from the hierarchy: one prefix per level (the roots, the roots and their
    children, ...), then all of d_sae (the features outside the trees), so each level of general
    features has a prefix of about its own size to live in."""
    widths, level, total = [], list(model.hierarchy.roots), 0
    while level and total + len(level) < d_sae:
        total += len(level)
        widths.append(total)
        level = [child for node in level for child in node.children]
    return [*widths, d_sae]


GENERATION_ARGS = ("features", "d_in", "roots", "branching", "depth", "mutually_exclusive", "train_rows",
                   "heldout_rows", "seed")


def data_for(args, model, folder: Path) -> dict:
    """The data folder's summary, written once: a folder made with the same generation arguments
    is reused (a rerun of other SAEs on the same rows)."""
    asked = {name: getattr(args, name) for name in GENERATION_ARGS}
    summary_file = folder / "generation.json"
    if summary_file.exists():
        summary = json.loads(summary_file.read_text())
        if summary["args"] == asked:
            print(f"data: reusing {folder}")
            return summary
        raise SystemExit(f"{folder} holds data made with {summary['args']}: give another --data or --out")
    torch.manual_seed(args.seed)  # the generator samples from torch's global RNG
    started = time.monotonic()
    summary = {"args": asked, **write_data(model, folder, args.train_rows, args.heldout_rows),
               "seconds": time.monotonic() - started}
    summary_file.write_text(json.dumps(summary, indent=2))
    return summary


@torch.no_grad()
def write_data(model, folder: Path, train_rows: int, heldout_rows: int) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    train = np.lib.format.open_memmap(folder / "train.npy", mode="w+", dtype=np.float32,
                                      shape=(train_rows, model.cfg.hidden_dim))
    true_l0 = 0.0
    for start in range(0, train_rows, GENERATION_CHUNK):
        hidden, features = model.sample_with_features(min(GENERATION_CHUNK, train_rows - start))
        train[start : start + len(hidden)] = hidden.numpy()
        true_l0 += (features > 0).sum().item()
    train.flush()
    del train
    hidden, features = model.sample_with_features(heldout_rows)
    np.save(folder / "heldout.npy", hidden.numpy())
    rows, cols = features.nonzero(as_tuple=True)
    np.savez(folder / "heldout_features.npz", rows=rows.numpy(), cols=cols.numpy(),
             values=features[rows, cols].numpy(), shape=np.array(features.shape))
    return {"train_true_l0": true_l0 / train_rows}


def heldout_features(folder: Path) -> torch.Tensor:
    stored = np.load(folder / "heldout_features.npz")
    features = torch.zeros(tuple(stored["shape"]))
    features[torch.from_numpy(stored["rows"]), torch.from_numpy(stored["cols"])] = torch.from_numpy(stored["values"])
    return features


def with_a_child(features: torch.Tensor, parents: dict[int, list[int]]) -> float:
    """Of the held-out rows where a parent fires, the share where one of its children fires too."""
    active = features[:, list(parents)] > 0
    child = torch.stack([(features[:, children] > 0).any(dim=1) for children in parents.values()], dim=1)
    return (active & child).sum().item() / max(1, active.sum().item())


class Replay:
    """An ActivationGenerator's `sample` over stored ground-truth rows, so every SAE is scored by
    `eval_sae_on_synthetic_data` on the same held-out rows."""

    def __init__(self, features: torch.Tensor):
        self.features, self.position = features, 0

    def sample(self, n: int) -> torch.Tensor:
        rows = self.features[self.position : self.position + n]
        self.position += n
        return rows


# --- scoring -----------------------------------------------------------------------------------

@torch.no_grad()
def score(sae_folder: Path, model, features: torch.Tensor, heldout: torch.Tensor, parents: dict[int, list[int]]) -> dict:
    from sae_lens import SAE
    from sae_lens.synthetic import eval_sae_on_synthetic_data
    from sae_lens.util import cosine_similarities

    sae = SAE.load_from_disk(str(sae_folder), device="cpu")
    if not torch.allclose(model.feature_dict(features), heldout, atol=1e-5):
        raise SystemExit("the held-out rows do not follow from their stored features")
    result = eval_sae_on_synthetic_data(sae, model.feature_dict, Replay(features), num_samples=len(features),
                                        batch_size=4096)
    latent_of = cosine_similarities(model.feature_dict.feature_vectors[list(parents)], sae.W_dec).abs().argmax(dim=1)
    fires = sae.encode(heldout) != 0
    with_child, alone = [], []
    for (parent, children), latent in zip(parents.items(), latent_of.tolist()):
        active = features[:, parent] > 0
        child = (features[:, children] > 0).any(dim=1)
        for rows, into in ((active & child, with_child), (active & ~child, alone)):
            if rows.any():
                into.append(fires[rows, latent].float().mean().item())
    return {"ev": result.explained_variance, "l0": result.sae_l0, "true_l0": result.true_l0,
            "dead": result.dead_latents, "mcc": result.mcc, "f1": result.classification.f1_score,
            "precision": result.classification.precision, "recall": result.classification.recall,
            "uniqueness": result.uniqueness, "shrinkage": result.shrinkage,
            "parent_recall_with_child": float(np.mean(with_child)) if with_child else None,
            "parent_recall_alone": float(np.mean(alone)) if alone else None,
            "absorption": 1 - float(np.mean(with_child)) if with_child else None}


# --- ours: manage.py train in the app's venv ---------------------------------------------------

def app_architectures(args) -> set[str]:
    done = subprocess.run([str(args.app_python), "manage.py", "train", "--help"], cwd=args.app_repo,
                          capture_output=True, text=True, env={**os.environ, "MISTUDIO_DEBUG": "1"})
    if done.returncode != 0:
        raise SystemExit(f"manage.py train --help failed:\n{done.stderr[-2000:]}")
    listed = re.search(r"SAE architecture:\s*([\w,\s]+?)\s*\(default", done.stdout)
    return {name.strip() for name in listed.group(1).split(",")} if listed else set()


def ours_train(args, folder: Path, architecture: str, train_file: Path, widths: list[int]) -> dict:
    env = {**os.environ, "MISTUDIO_DEBUG": "1", "MISTUDIO_DATA_DIR": str(folder / "data"),
           "MISTUDIO_MODELS_DIR": str(folder / "models"), "DATABASE_URL": f"sqlite:///{folder / 'db.sqlite3'}"}
    subprocess.run([str(args.app_python), "manage.py", "migrate", "-v0"], cwd=args.app_repo, env=env, check=True)
    command = [str(args.app_python), "manage.py", "train", "--activations", str(train_file), "--no-progress",
               "--architecture", architecture, "--hidden-dim", str(args.d_sae), "--k", str(args.k),
               "--learning-rate", str(args.lr), "--sae-batch-tokens", str(args.batch), "--max-epochs", "1",
               "--min-loss", "0"]
    if architecture == "matryoshka_batchtopk":
        command += ["--matryoshka-widths", ",".join(map(str, widths))]
    result, wall = run_train(command, cwd=args.app_repo, env=env, label=architecture)
    stats = result["training_stats"]
    return {"folder": Path(result["exports"]["saelens"]), "wall_s": wall, "training_tokens": stats["training_tokens"],
            "batch": stats["sae_batch_tokens_used"], "own_ev": result["evaluation"]["explained_variance"]}


# --- SAELens: its SAETrainer on the same rows --------------------------------------------------

def saelens_train(args, folder: Path, architecture: str, rows: np.ndarray, batch: int, widths: list[int]) -> dict:
    from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.matryoshka_batchtopk_sae import (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )
    from sae_lens.training.sae_trainer import SAETrainer

    acts = torch.from_numpy(np.ascontiguousarray(rows))
    n = len(acts) // batch * batch
    steps = n // batch
    # Ours' schedule (docs/architectures.md): warm-up over the first 1% of steps, linear decay to
    # zero over the last 20%; the input scaling to mean norm sqrt(d_in) is SAELens'
    # expected_average_only_in, folded into the weights at the end as ours is.
    trainer_cfg = SAETrainerConfig(
        total_training_samples=n, train_batch_size_samples=batch, lr=args.lr, lr_end=args.lr,
        lr_scheduler_name="constant", lr_warm_up_steps=round(0.01 * steps), lr_decay_steps=round(0.2 * steps),
        device="cpu", n_batches_for_norm_estimate=max(1, 8192 // batch), logger=LoggingConfig(log_to_wandb=False),
        dead_feature_window=args.saelens_dead_window,
    )
    common = dict(d_in=acts.shape[1], d_sae=args.d_sae, k=args.k, dtype="float32", device="cpu",
                  normalize_activations="expected_average_only_in")
    if architecture == "matryoshka_batchtopk":
        sae = MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(**common, matryoshka_widths=list(widths)))
    else:
        sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**common))

    def batches():
        generator = torch.Generator().manual_seed(args.seed)
        while True:  # the norm estimate draws a few batches first
            order = torch.randperm(len(acts), generator=generator)
            for start in range(0, n, batch):
                yield acts[order[start : start + batch]]

    started = time.monotonic()
    torch.manual_seed(args.seed)
    trained = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=batches()).fit()
    wall = time.monotonic() - started
    trained.save_inference_model(folder)
    return {"folder": folder, "wall_s": wall, "training_tokens": n, "batch": batch}


# --- the run -----------------------------------------------------------------------------------

def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ours", default=",".join(ARCHITECTURES), help="architectures trained by manage.py train")
    parser.add_argument("--saelens", default=",".join(ARCHITECTURES), help="architectures trained by SAELens")
    parser.add_argument("--features", type=int, default=1024, help="ground-truth features")
    parser.add_argument("--d-in", type=int, default=128)
    parser.add_argument("--roots", type=int, default=48, help="hierarchy trees")
    parser.add_argument("--branching", type=int, default=4, help="children per parent")
    parser.add_argument("--depth", type=int, default=2, help="levels of children below a root")
    parser.add_argument("--mutually-exclusive", type=float, default=1.0,
                        help="share of parents whose children fire one at a time")
    parser.add_argument("--train-rows", type=int, default=150_000)
    parser.add_argument("--heldout-rows", type=int, default=10_000)
    parser.add_argument("--d-sae", type=int, default=None, help="SAE width (default: --features)")
    parser.add_argument("--k", type=int, default=None, help="default: the training rows' true L0, rounded")
    parser.add_argument("--batch", type=int, default=128, help="rows per optimizer step, both sides")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--matryoshka-widths", default=None,
                        help="comma-separated; default: one per level of the hierarchy (roots, roots + their children, ...), then d_sae")
    parser.add_argument("--saelens-dead-window", type=int, default=1000,
                        help="steps without firing before SAELens counts a latent dead for its AuxK (its default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=None,
                        help="the data folder (default: OUT/data); reused when made with the same arguments")
    parser.add_argument("--app-repo", type=Path, default=REPO)
    parser.add_argument("--app-python", type=Path, default=None, help="default: APP_REPO/.venv/bin/python")
    parser.add_argument("--out", type=Path, default=None, help="folder for the data, the SAEs and results.json "
                                                               "(default: a temporary folder, removed)")
    args = parser.parse_args()
    args.app_python = args.app_python or args.app_repo / ".venv" / "bin" / "python"
    args.d_sae = args.d_sae or args.features
    for side in ("ours", "saelens"):
        names = [name.strip() for name in getattr(args, side).split(",") if name.strip()]
        unknown = set(names) - set(ARCHITECTURES)
        if unknown:
            parser.error(f"--{side}: unknown {sorted(unknown)}; choose from {', '.join(ARCHITECTURES)}")
        setattr(args, side, names)
    return args


def main() -> None:
    args = parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    import sae_lens

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        data = args.data or out / "data"
        model = synthetic_model(args)
        parents = parents_and_children(model)
        generated = data_for(args, model, data)
        args.k = args.k or max(1, round(generated["train_true_l0"]))
        widths = ([int(w) for w in args.matryoshka_widths.split(",")] if args.matryoshka_widths
                  else level_widths(model, args.d_sae))
        print(f"data: {args.train_rows} + {args.heldout_rows} rows, d_in {args.d_in}, {args.features} features "
              f"({len(parents)} parents), true L0 {generated['train_true_l0']:.1f}, written in "
              f"{generated['seconds']:.0f} s; SAEs: d_sae {args.d_sae}, k {args.k}, batch {args.batch}, "
              f"lr {args.lr:g}, matryoshka widths {widths}", flush=True)
        features, heldout = heldout_features(data), torch.from_numpy(np.load(data / "heldout.npy"))
        generated["parent_rows_with_a_child"] = with_a_child(features, parents)
        print(f"held out: a parent fires with one of its children in {generated['parent_rows_with_a_child']:.0%} "
              "of its rows (SAELens' probability compensation clamps a child's to 1 where it exceeds its parent's)")

        listed = app_architectures(args)
        rows, failures, trained_tokens = [], [], {}
        for architecture in args.ours:
            if architecture not in listed:
                print(f"ours {architecture}: skipped, the app's manage.py train lists only {', '.join(sorted(listed))}")
                continue
            try:
                run = ours_train(args, out / f"ours_{architecture}", architecture, data / "train.npy", widths)
                trained_tokens[architecture] = (run["training_tokens"], run["batch"])
                rows.append({"architecture": architecture, "side": "ours", **run,
                             **score(run["folder"], model, features, heldout, parents)})
            except Exception as error:  # one side's failure is reported, the others still run
                failures.append(f"ours {architecture}: {error}")
                print(failures[-1], flush=True)
        train = np.load(data / "train.npy", mmap_mode="r")
        # Ours trains on the file's rows but its held-out tail (engine.defaults.eval_rows):
        # SAELens gets the same leading rows and the batch ours used.
        default_tokens = (len(train) - min(max(1, round(len(train) * 0.05)), 100_000), args.batch)
        for architecture in args.saelens:
            tokens, batch = trained_tokens.get(architecture, next(iter(trained_tokens.values()), default_tokens))
            try:
                run = saelens_train(args, out / f"saelens_{architecture}", architecture, train[:tokens], batch, widths)
                rows.append({"architecture": architecture, "side": "SAELens", **run,
                             **score(run["folder"], model, features, heldout, parents)})
            except Exception as error:
                failures.append(f"SAELens {architecture}: {error}")
                print(failures[-1], flush=True)

        report(args, rows, widths, generated, sae_lens.__version__, out, failures)
    if failures:
        raise SystemExit(1)


def report(args, rows: list[dict], widths: list[int], generated: dict, saelens_version: str, out: Path,
           failures: list[str]) -> None:
    print(f"\n# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, sae-lens {saelens_version}; held-out rows {args.heldout_rows}")
    print("| Architecture | Side | EV | L0 | MCC | F1 | Dead | Parent recall with a child / alone | Absorption | Tokens | Wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        recall = (f"{r['parent_recall_with_child']:.3f} / {r['parent_recall_alone']:.3f}"
                  if r["parent_recall_with_child"] is not None and r["parent_recall_alone"] is not None else "-")
        absorption = f"{r['absorption']:.3f}" if r["absorption"] is not None else "-"
        print(f"| `{r['architecture']}` | {r['side']} | {r['ev']:.3f} | {r['l0']:.1f} | {r['mcc']:.3f} | "
              f"{r['f1']:.3f} | {r['dead']} | {recall} | {absorption} | {r['training_tokens']} | {r['wall_s']:.0f} |")
    for side in ("ours", "SAELens"):
        by_name = {r["architecture"]: r for r in rows if r["side"] == side}
        if {"batchtopk", "matryoshka_batchtopk"} <= set(by_name):
            plain, nested = by_name["batchtopk"], by_name["matryoshka_batchtopk"]
            print(f"{side}: Matryoshka vs BatchTopK at d_sae {args.d_sae}, k {args.k}: MCC {nested['mcc']:.3f} vs "
                  f"{plain['mcc']:.3f}, F1 {nested['f1']:.3f} vs {plain['f1']:.3f}, absorption "
                  f"{nested['absorption']:.3f} vs {plain['absorption']:.3f}, EV {nested['ev']:.3f} vs {plain['ev']:.3f}")
    for failure in failures:
        print(f"FAILED {failure.splitlines()[0]}")
    document = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "matryoshka_widths": widths, "data": generated, "sae_lens": saelens_version,
                "rows": [{k: str(v) if isinstance(v, Path) else v for k, v in r.items()} for r in rows],
                "failures": failures}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(document, indent=2))
    print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    sys.exit(main())
