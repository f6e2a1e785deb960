"""What each architecture gives with the seed's defaults on the bundled model: the README's
"Architectures" table, measured through `manage.py train` as a user runs it.

Every row is one real job (its own database and data folder under a temporary directory) on
sentence-transformers/all-MiniLM-L6-v2, layer 3 (the bundled model has 6; the seed's default 12
does not exist there), the sample corpus, and every other field at its default unless the row
names it. Runs in the app's .venv:

    .venv/bin/python bench/defaults.py                 # every row
    .venv/bin/python bench/defaults.py --rows relu,jumprelu
    .venv/bin/python bench/defaults.py --corpus other.txt
    .venv/bin/python bench/defaults.py --python-docs --rows relu,jumprelu,topk

--python-docs trains on a larger corpus every Python has: the paragraphs of the standard library's
pydoc_data topics (~1,400 lines, ~99k MiniLM tokens), each row then takes minutes.
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
}


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


def run_row(folder: Path, corpus: Path, args: list[str]) -> tuple[dict, float]:
    env = {**os.environ, "MISTUDIO_DEBUG": "1", "MISTUDIO_DATA_DIR": str(folder / "data"),
           "MISTUDIO_MODELS_DIR": str(folder / "models"), "DATABASE_URL": f"sqlite:///{folder / 'db.sqlite3'}"}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO, env=env, check=True)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "manage.py", "train", "--model", "sentence-transformers/all-MiniLM-L6-v2",
         "--corpus", str(corpus), "--layer-number", "3", "--no-progress", *args],
        cwd=REPO, env=env, capture_output=True, text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"manage.py train {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    stdout = done.stdout
    start = stdout.rindex("\n{") + 1 if "\n{" in stdout else stdout.index("{")
    return json.loads(stdout[start:]), time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from: {', '.join(ROWS)}")
    parser.add_argument("--corpus", type=Path, default=REPO / "samples" / "demo_corpus.txt")
    parser.add_argument("--python-docs", action="store_true", help="train on Python's pydoc topics instead (larger)")
    options = parser.parse_args()
    names = [name.strip() for name in options.rows.split(",") if name.strip()]
    unknown = [name for name in names if name not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}: choose from {', '.join(ROWS)}")

    with tempfile.TemporaryDirectory() as tmp:
        if options.python_docs:
            options.corpus = python_docs_corpus(Path(tmp) / "python_docs.txt")
        print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs, corpus {options.corpus.name}")
        print("| Request | L0 | Explained variance | Dead | Dense (>10%) | Steps x batch | Seconds |")
        print("|---|---|---|---|---|---|---|")
        for name in names:
            label, args = ROWS[name]
            result, seconds = run_row(Path(tmp) / name, options.corpus, args)
            ev = result["evaluation"]
            stats = result["training_stats"]
            batch = stats["sae_batch_tokens_used"]
            steps = stats["total_epochs"] * -(-stats["training_tokens"] // batch)
            print(f"| {label} | {ev['l0']:.0f} | {ev['explained_variance']:.2f} | {ev['dead_features']} | "
                  f"{ev['dense_features']} | {steps} x {batch} | {seconds:.0f} |", flush=True)
    print(f"(held-out tokens: {ev['eval_tokens']})")


if __name__ == "__main__":
    main()
