"""Real sizes on one machine (issue 25): a one-pass streamed run at 1M, 5M and 20M tokens, each a
whole process: wall, tokens/s, the share of wall time spent training, and every phase's seconds
and peak RSS (VmHWM, reset at each phase).

The run is what a new user tries: a Llama-shaped LM with GPT-2's 50,257-token vocabulary
(bench/_setup.build_model, random weights: speed and memory do not depend on them), a JSONL of
English documents (the demo corpus's lines, shuffled and repeated, 40 lines a document), concat
packing into windows of --context tokens, --batch sequences a forward, TopK k 32 at --d-sae,
`cache_activations="never"` (the rows stream from the model to the SAE), one pass, the
evaluation's and the analysis' token caps at their defaults.

Phases: `startup` (the interpreter, imports, the spec) then the run's own (engine.run's on_phase:
loading, which tokenizes the corpus once to count its rows, training, evaluating, analyzing) and
`writing` (after the analysis: statistics, metadata). Peak RSS is the process's own: the run has
no child processes.

Run in the app's .venv from the repository root (20M tokens take about 25 minutes on 2 cores):
    .venv/bin/python bench/real_sizes.py --tokens 1000000                  # one size
    .venv/bin/python bench/real_sizes.py --tokens 1000000,5000000,20000000
    .venv/bin/python bench/real_sizes.py --tokens 1000000 --profile        # cProfile's top entries
"""
import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

STARTED = time.monotonic()
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

LINES_PER_DOCUMENT = 40


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="1000000", help="comma-separated training_tokens, one run each")
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32, help="sequences per forward of the model")
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--sae-batch", type=int, default=4096, help="SAE batch, tokens")
    parser.add_argument("--hidden", type=int, default=128, help="the LM's d_model")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--model", help="train on this model instead of the random Llama-shaped one (for example the "
                                        "bundled HuggingFaceTB/SmolLM2-135M-Instruct); its layer is --layer")
    parser.add_argument("--layer", type=int, help="with --model: the block whose output is read (default: half its depth)")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mistudio-bench" / "real-sizes")
    parser.add_argument("--profile", action="store_true", help="cProfile the run; print the top entries (slower)")
    parser.add_argument("--worker", nargs=3, metavar=("TOKENS", "CORPUS", "FOLDER"), help=argparse.SUPPRESS)
    return parser.parse_args()


def corpus(cache: Path, tokens: int) -> Path:
    """A JSONL of documents holding at least 1.2 x `tokens` GPT-2 tokens (the demo corpus's lines,
    ~12 tokens each, shuffled anew for every repeat), written once per size."""
    import _setup

    path = cache / f"corpus-{tokens}.jsonl"
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    lines = _setup.corpus_lines()
    rng = random.Random(0)
    n_lines = int(tokens * 1.2 / 10)
    with open(path.with_suffix(".partial"), "w", encoding="utf-8") as out:
        written = 0
        while written < n_lines:
            rng.shuffle(lines)
            for i in range(0, len(lines), LINES_PER_DOCUMENT):
                out.write(json.dumps({"text": "\n".join(lines[i : i + LINES_PER_DOCUMENT])}) + "\n")
            written += len(lines)
    path.with_suffix(".partial").rename(path)
    return path


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise SystemExit("no VmHWM in /proc/self/status: this bench reads Linux's")


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")


class Phases:
    """on_phase: each phase's wall seconds and peak RSS, from `startup` on."""

    def __init__(self):
        self.names, self.starts, self.peaks = ["startup"], [STARTED], []
        self.process_peak = 0

    def __call__(self, phase, **_):
        self.peaks.append(peak_rss_bytes())
        self.process_peak = max(self.process_peak, self.peaks[-1])
        reset_peak_rss()
        self.names.append(phase)
        self.starts.append(time.monotonic())

    def end(self) -> dict:
        self("end")
        return {name: {"s": round(end - start, 2), "peak_rss_mb": round(peak / 1e6)}
                for name, start, end, peak in zip(self.names, self.starts, self.starts[1:], self.peaks)}


def worker(args) -> None:
    import _setup

    _setup.set_threads()
    from engine.run import RunCallbacks, RunPaths, RunSpec, run
    from engine.trainer import TrainConfig

    tokens, corpus_path, folder = int(args.worker[0]), Path(args.worker[1]), Path(args.worker[2])
    if args.model:
        model, layer = args.model, args.layer if args.layer is not None else model_depth(args.model) // 2
    else:
        folder_of_model = args.cache / f"model-{args.hidden}x{args.layers}"
        model = folder_of_model if (folder_of_model / "config.json").is_file() else \
            _setup.build_model(folder_of_model, hidden_size=args.hidden, layers=args.layers)
        layer = args.layers // 2
    config = TrainConfig(min_steps=0, cpu_bf16="off", architecture="topk", k=args.k, hidden_dim=args.d_sae, sae_batch_tokens=args.sae_batch,
                         max_epochs=1, seed=0)
    spec = RunSpec(cpu_bf16="off", paths=RunPaths.in_folder(folder), config=config, model=str(model), corpus=corpus_path,
                   training_tokens=tokens, cache_activations="never", layer_number=layer,
                   max_sequence_length=args.context, batch_size=args.batch)
    phases = Phases()
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    outcome = run(spec, RunCallbacks(on_phase=phases))
    if profiler is not None:
        import pstats

        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(40)
    phase = phases.end()
    wall = time.monotonic() - STARTED
    evaluation = outcome.evaluation
    print(json.dumps({
        "tokens": outcome.training_stats["tokens_trained"], "wall_s": round(wall, 2), "phases": phase,
        "peak_rss_mb": round(phases.process_peak / 1e6),
        "training_share": round(phase["training"]["s"] / wall, 3),
        "tokens_per_s": round(outcome.training_stats["tokens_trained"] / wall),
        "ev": evaluation["explained_variance"], "ce_loss_recovered": evaluation.get("ce_loss_recovered"),
        "eval_tokens": evaluation["eval_tokens"], "ce_eval_tokens": evaluation.get("ce_eval_tokens"),
        "analyzed_tokens": (outcome.features or {}).get("analyzed_tokens"),
    }))


def model_depth(model: str) -> int:
    from engine.models.info import num_layers
    from engine.models.resolve import load_config, resolve_model

    return num_layers(load_config(resolve_model(model, models_dir=None)))


def main() -> None:
    args = parse_args()
    if args.worker:
        return worker(args)
    import tempfile

    import _setup

    rows = []
    for tokens in (int(t) for t in args.tokens.split(",")):
        path = corpus(args.cache, tokens)
        with tempfile.TemporaryDirectory() as folder:
            command = [sys.executable, __file__, "--worker", str(tokens), str(path), folder, "--context", str(args.context),
                       "--batch", str(args.batch), "--d-sae", str(args.d_sae), "--k", str(args.k),
                       "--sae-batch", str(args.sae_batch), "--hidden", str(args.hidden), "--layers", str(args.layers),
                       "--cache", str(args.cache)] + (["--profile"] if args.profile else []) + \
                      (["--model", args.model] if args.model else []) + (["--layer", str(args.layer)] if args.layer is not None else [])
            started = time.monotonic()
            done = subprocess.run(command, stdout=subprocess.PIPE, text=True, cwd=REPO)
            if done.returncode:
                raise SystemExit(f"the {tokens}-token run failed (exit {done.returncode})")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["process_wall_s"] = round(time.monotonic() - started, 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\nmachine: {_setup.machine()}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{args.model}, layer {args.layer}" if args.model else f"Llama-shaped LM d_model {args.hidden}, {args.layers} layers, GPT-2 vocabulary", end="")
    print(f"; JSONL documents, concat "
          f"packing, context {args.context}, batch {args.batch}; topk k {args.k}, d_sae {args.d_sae}, SAE batch "
          f"{args.sae_batch}; cache_activations never, one pass")
    names = [n for n in rows[0]["phases"]]
    print(f"\n{'tokens':>10s} {'wall s':>7s} {'tok/s':>7s} {'train%':>6s} {'peak MB':>7s}  " +
          "  ".join(f"{n[:10]:>10s} s/MB" for n in names))
    for r in rows:
        print(f"{r['tokens']:>10,d} {r['process_wall_s']:7.0f} {r['tokens_per_s']:7,d} {100 * r['training_share']:5.1f}% "
              f"{r['peak_rss_mb']:7d}  " + "  ".join(f"{r['phases'][n]['s']:7.1f}/{r['phases'][n]['peak_rss_mb']:<6d}"
                                                    for n in names))


if __name__ == "__main__":
    main()
