"""What each architecture gives with the seed's defaults on the bundled model: the
table in docs/architectures.md, measured through `manage.py train` as a user runs it.

Every row is one real job (its own database and data folder under a temporary directory) on
sentence-transformers/all-MiniLM-L6-v2, layer 3 (the bundled model has 6; the seed's default 12
does not exist there), the sample corpus, and every other field at its default unless the row
names it. Runs in the app's .venv:

    .venv/bin/python bench/defaults.py                 # every row
    .venv/bin/python bench/defaults.py --rows relu,jumprelu
    .venv/bin/python bench/defaults.py --corpus other.txt
    .venv/bin/python bench/defaults.py --python-docs --rows relu,jumprelu,topk

--smollm2 trains on the bundled causal LM instead, SmolLM2-135M-Instruct (d_model 576), layer 15 of
30: real activations at a width other than the one the sparsity factor was chosen at (384), where
the rules that scale it with the width (docs/architectures.md) show:

    .venv/bin/python bench/defaults.py --smollm2 --rows relu,jumprelu,gated

--python-docs trains on a larger corpus every Python has: the paragraphs of the standard library's
pydoc_data topics (~1,400 lines, ~99k MiniLM tokens), each row then takes minutes.

--synthetic trains instead on planted-dictionary activations (`manage.py train --activations
FILE.npy`, float32 [tokens, width]) across input widths and offsets, every field at its default
but hidden_dim (and k): the table of issue 17, where defaults once collapsed on an offset:

    .venv/bin/python bench/defaults.py --synthetic                          # 48,384,1024,4096 x 3 x 7
    .venv/bin/python bench/defaults.py --synthetic --widths 48 --offsets none,constant --rows relu,jumprelu

The data: 2 x width unit directions, ~8 active per token at magnitudes in [0.5, 1.5], small noise;
offset "constant" adds the same value to every coordinate, "random" a random mean vector, each of
norm ten times the signal's mean norm. Width 4096 gets fewer tokens (2 shared cores).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

ROWS = {
    "relu": ("`relu` (sparsity_coeff 0.001)", []),
    "relu-half": ("`relu`, sparsity_coeff 0.0005", ["--sparsity-coeff", "0.0005"]),
    "relu-double": ("`relu`, sparsity_coeff 0.002", ["--sparsity-coeff", "0.002"]),
    "topk": ("`topk`, k 32", ["--architecture", "topk", "--k", "32"]),
    "batchtopk": ("`batchtopk`, k 32", ["--architecture", "batchtopk", "--k", "32"]),
    "jumprelu": ("`jumprelu` (sparsity_coeff 0.001)", ["--architecture", "jumprelu"]),
    "jumprelu-double": ("`jumprelu`, sparsity_coeff 0.002", ["--architecture", "jumprelu", "--sparsity-coeff", "0.002"]),
    "jumprelu-target": ("`jumprelu`, target_l0 32", ["--architecture", "jumprelu", "--target-l0", "32"]),
    "gated": ("`gated` (sparsity_coeff 0.001)", ["--architecture", "gated"]),
    "gated-double": ("`gated`, sparsity_coeff 0.002", ["--architecture", "gated", "--sparsity-coeff", "0.002"]),
    "relu-target": ("`relu`, target_l0 32", ["--target-l0", "32"]),
    "matryoshka": ("`matryoshka_batchtopk`, k 32", ["--architecture", "matryoshka_batchtopk", "--k", "32"]),
}


SYNTHETIC_ROWS = {
    "relu": ("relu", []),
    "topk": ("topk, k 32", ["--architecture", "topk", "--k", "32"]),
    "batchtopk": ("batchtopk, k 32", ["--architecture", "batchtopk", "--k", "32"]),
    "jumprelu": ("jumprelu", ["--architecture", "jumprelu"]),
    "relu-target": ("relu, target_l0 32", ["--target-l0", "32"]),
    "gated": ("gated", ["--architecture", "gated"]),
    "matryoshka": ("matryoshka_batchtopk, k 32", ["--architecture", "matryoshka_batchtopk", "--k", "32"]),
}
SYNTHETIC_WIDTHS = (48, 384, 1024, 4096)
OFFSETS = ("none", "constant", "random")
SYNTHETIC_HIDDEN_DIM = 1024
_ACTIVE_PER_TOKEN = 8
_OFFSET_TIMES_SIGNAL = 10.0


def synthetic_tokens(width: int) -> int:
    """Fewer tokens where a step costs more, so the widest rows still end in minutes."""
    return 16384 if width <= 1024 else 8192


def synthetic_activations(path: Path, width: int, offset: str, seed: int = 0) -> Path:
    import numpy as np

    rng = np.random.default_rng(seed)
    n_true, n_rows = 2 * width, synthetic_tokens(width)
    directions = rng.standard_normal((n_true, width)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    fires = rng.random((n_rows, n_true), dtype=np.float32) < _ACTIVE_PER_TOKEN / n_true
    x = (rng.uniform(0.5, 1.5, (n_rows, n_true)).astype(np.float32) * fires) @ directions
    x += 0.01 * rng.standard_normal((n_rows, width)).astype(np.float32)
    signal = float(np.linalg.norm(x, axis=1).mean())
    if offset == "constant":
        x += _OFFSET_TIMES_SIGNAL * signal / np.sqrt(width)
    elif offset == "random":
        mean = rng.standard_normal(width).astype(np.float32)
        x += _OFFSET_TIMES_SIGNAL * signal * mean / np.linalg.norm(mean)
    np.save(path, x.astype(np.float32))
    return path


def synthetic_table(options, tmp: Path) -> None:
    widths = [int(w) for w in options.widths.split(",")]
    offsets = [o.strip() for o in options.offsets.split(",")]
    names = [name.strip() for name in options.rows.split(",")] if options.rows else list(SYNTHETIC_ROWS)
    unknown = [name for name in names if name not in SYNTHETIC_ROWS] + [o for o in offsets if o not in OFFSETS]
    if unknown:
        raise SystemExit(f"unknown rows or offsets {unknown}: rows from {', '.join(SYNTHETIC_ROWS)}, offsets from {', '.join(OFFSETS)}")
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, synthetic, hidden_dim {SYNTHETIC_HIDDEN_DIM}")
    print("| Width | Offset | Request | L0 | Explained variance | Dead | Dense (>10%) | Warnings | Seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for width in widths:
        for offset in offsets:
            data = synthetic_activations(tmp / f"acts_{width}_{offset}.npy", width, offset)
            for name in names:
                label, args = SYNTHETIC_ROWS[name]
                result, seconds = run_row(tmp / f"{name}_{width}_{offset}", None,
                                          ["--hidden-dim", str(SYNTHETIC_HIDDEN_DIM), *args], activations=data)
                ev = result["evaluation"]
                warnings = result.get("warnings")  # None: a version before warnings
                warnings = "-" if warnings is None else "; ".join(w.split(":")[0] for w in warnings) or "none"
                print(f"| {width} | {offset} | {label} | {ev['l0']:.1f} | {ev['explained_variance']:.2f} | "
                      f"{ev['dead_features']} | {ev['dense_features']} | {warnings} | {seconds:.0f} |", flush=True)


def python_docs_corpus(path: Path) -> Path:
    """One line per paragraph of pydoc_data.topics longer than 80 characters (cut at 1,500),
    interactive examples left out."""
    import re

    import pydoc_data.topics

    lines = []
    for text in pydoc_data.topics.topics.values():
        for paragraph in re.split(r"\n\s*\n", text):
            paragraph = " ".join(paragraph.split())
            if len(paragraph) > 80 and not paragraph.startswith(">>>"):
                lines.append(paragraph[:1500])
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


MINILM = ("sentence-transformers/all-MiniLM-L6-v2", 3)


def run_row(folder: Path, corpus: Path | None, args: list[str], *, activations: Path | None = None,
            model: tuple[str, int] = MINILM) -> tuple[dict, float]:
    # A GGUF model (SmolLM2) is converted once for the whole table, in the table's folder.
    env = {**os.environ, "MISTUDIO_DEBUG": "1", "MISTUDIO_DATA_DIR": str(folder / "data"),
           "MISTUDIO_MODELS_DIR": str(folder / "models"), "DATABASE_URL": f"sqlite:///{folder / 'db.sqlite3'}",
           "MISTUDIO_MODELS_CACHE_DIR": str(folder.parent / "converted")}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO, env=env, check=True)
    started = time.monotonic()
    source = (["--activations", str(activations)] if activations is not None else
              ["--model", model[0], "--corpus", str(corpus), "--layer-number", str(model[1])])
    done = subprocess.run(
        [sys.executable, "manage.py", "train", *source, "--no-progress", *args],
        cwd=REPO, env=env, capture_output=True, text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"manage.py train {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    stdout = done.stdout
    start = stdout.rindex("\n{") + 1 if "\n{" in stdout else stdout.index("{")
    return json.loads(stdout[start:]), time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=None, help=f"comma-separated, from: {', '.join(ROWS)} "
                        f"(--synthetic: {', '.join(SYNTHETIC_ROWS)})")
    parser.add_argument("--corpus", type=Path, default=REPO / "samples" / "demo_corpus.txt")
    parser.add_argument("--python-docs", action="store_true", help="train on Python's pydoc topics instead (larger)")
    parser.add_argument("--synthetic", action="store_true", help="planted-dictionary activations across widths and offsets")
    parser.add_argument("--widths", default=",".join(map(str, SYNTHETIC_WIDTHS)), help="--synthetic: input widths")
    parser.add_argument("--offsets", default=",".join(OFFSETS), help=f"--synthetic: from {', '.join(OFFSETS)}")
    parser.add_argument("--smollm2", action="store_true",
                        help="the bundled SmolLM2-135M-Instruct (d_model 576), layer 15 of 30, instead of MiniLM")
    options = parser.parse_args()
    model = ("HuggingFaceTB/SmolLM2-135M-Instruct", 15) if options.smollm2 else MINILM
    if options.synthetic:
        with tempfile.TemporaryDirectory() as tmp:
            synthetic_table(options, Path(tmp))
        return
    names = [name.strip() for name in (options.rows or ",".join(ROWS)).split(",") if name.strip()]
    unknown = [name for name in names if name not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}: choose from {', '.join(ROWS)}")

    with tempfile.TemporaryDirectory() as tmp:
        if options.python_docs:
            options.corpus = python_docs_corpus(Path(tmp) / "python_docs.txt")
        print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs, {model[0]} layer {model[1]}, corpus {options.corpus.name}")
        print("| Request | L0 | Explained variance | Dead | Dense (>10%) | Steps x batch | Seconds |")
        print("|---|---|---|---|---|---|---|")
        for name in names:
            label, args = ROWS[name]
            result, seconds = run_row(Path(tmp) / name, options.corpus, args, model=model)
            ev = result["evaluation"]
            stats = result["training_stats"]
            batch = stats["sae_batch_tokens_used"]
            steps = stats["total_epochs"] * -(-stats["training_tokens"] // batch)
            print(f"| {label} | {ev['l0']:.0f} | {ev['explained_variance']:.2f} | {ev['dead_features']} | "
                  f"{ev['dense_features']} | {steps} x {batch} | {seconds:.0f} |", flush=True)
    print(f"(held-out tokens: {ev['eval_tokens']})")


if __name__ == "__main__":
    main()
