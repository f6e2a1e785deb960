"""A one-pass run whose activation cache would exceed a disk budget (issue 15): does it train with
no cache file, in bounded memory, at the explained variance of the same run cached, and how fast?

Two sides, each a whole process of this script (`--worker`), alternated in one run (`--repeats`
pairs, the order flipped every pair) because the machine's cores are shared, so read the ratios:

- streamed: `cache_activations="auto"`, `disk_budget_bytes` = --disk-budget-mb, a training_tokens
  budget (--tokens) whose cache (tokens x (d_model x 2 + 4) bytes) exceeds it: the rows flow from
  the model through a shuffle block to the SAE (engine.activations.stream, engine.trainer.streamed);
- cached: the same run with `cache_activations="always"` and no disk budget: extract to a .npy
  first, then train on random batches of it.

Both: the bundled SmolLM2-135M-Instruct (d_model 576; converted once into --models-cache), layer
15 resid_post, Debian's fortunes (bench/english_corpus.py) as a JSONL of documents of 10 lines, so
concat packing (the dataset formats' default) into windows of 128 tokens; TopK k 32, d_sae 4608,
SAE batch 4096 tokens, lr --lr, one pass, seed 0. FeatureSettings(max_tokens=
--analysis-tokens), so the streamed side's feature analysis (which runs the model again) stays
short; the cached side's reads its whole cache.

Per side: wall of the process, seconds of each run phase (on_phase), the engine's own
training_time_seconds, tokens/s of training and of extraction + training, peak RSS (VmHWM),
bytes left in the run's folder (du) and whether a cache file is there, EV and CE loss recovered.
Then the streamed side again at --tokens / 4: its peak RSS must not grow with the tokens. Exit 1
when |EV streamed - EV cached| > --ev-tolerance or a streamed side wrote a cache.

Run in the app's .venv from the repository root:
    .venv/bin/python bench/streaming.py --models-cache /tmp/smolcache --tokens 20000   # a try
    .venv/bin/python bench/streaming.py --models-cache /tmp/smolcache                  # 250k tokens
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
LINES_PER_DOCUMENT = 10
SIDES = ("streamed", "cached")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=250_000, help="training_tokens of a run")
    parser.add_argument("--disk-budget-mb", type=int, default=256, help="the streamed side's disk_budget_bytes, MB")
    parser.add_argument("--repeats", type=int, default=1, help="pairs of (streamed, cached) processes")
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096, help="SAE batch, tokens")
    parser.add_argument("--lr", type=float, default=1e-3, help="as bench/smollm2.py")
    parser.add_argument("--context", type=int, default=128, help="max_sequence_length")
    parser.add_argument("--analysis-tokens", type=int, default=50_000, help="FeatureSettings.max_tokens")
    parser.add_argument("--buffer", type=int, default=65536,
                        help="shuffle_buffer_tokens: a streamed run's blocks (smaller: many blocks at few tokens)")
    parser.add_argument("--ev-tolerance", type=float, default=0.01)
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mistudio-bench")
    parser.add_argument("--models-cache", type=Path, default=None, help="where the GGUF is converted once; default CACHE/models")
    parser.add_argument("--worker", nargs=4, metavar=("SIDE", "TOKENS", "CORPUS", "FOLDER"), help=argparse.SUPPRESS)
    return parser.parse_args()


# --- the corpus ------------------------------------------------------------------------------

def corpus_jsonl(cache: Path, out: Path) -> Path:
    """english_corpus.py's train.txt (written once in CACHE/corpus) as documents of 10 lines."""
    folder = cache / "corpus"
    if not (folder / "train.txt").is_file():
        subprocess.run([sys.executable, str(REPO / "bench" / "english_corpus.py"), "--out", str(folder)], check=True)
    lines = [line.strip() for line in (folder / "train.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
    with open(out, "w", encoding="utf-8") as handle:
        for i in range(0, len(lines), LINES_PER_DOCUMENT):
            handle.write(json.dumps({"text": "\n".join(lines[i : i + LINES_PER_DOCUMENT])}) + "\n")
    return out


# --- one side, in its own process --------------------------------------------------------------

def peak_rss_bytes() -> int:
    """VmHWM: the process's peak resident set since it started or since reset_peak_rss()."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> None:
    """So the next VmHWM is one phase's peak (Linux: "5" to clear_refs resets it)."""
    Path("/proc/self/clear_refs").write_text("5")


class Phases:
    """on_phase: each phase's wall seconds and peak RSS."""

    def __init__(self):
        self.names, self.starts, self.peaks = [], [], []
        self.process_peak = 0

    def __call__(self, phase, **_):
        self._close()
        self.names.append(phase)
        self.starts.append(time.monotonic())

    def _close(self):
        if self.names:
            self.peaks.append(peak_rss_bytes())
        self.process_peak = max(self.process_peak, peak_rss_bytes())
        reset_peak_rss()

    def end(self) -> dict:
        self._close()
        ends = self.starts[1:] + [time.monotonic()]
        return {name: {"s": end - start, "peak_rss_bytes": peak}
                for name, start, end, peak in zip(self.names, self.starts, ends, self.peaks)}


def folder_bytes(folder: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(folder)], capture_output=True, text=True, check=True).stdout.split()[0])


def run_spec(args, side: str, tokens: int, corpus: Path, folder: Path):
    from engine.run import FeatureSettings, RunPaths, RunSpec
    from engine.trainer import TrainConfig

    config = TrainConfig(min_steps=0, cpu_bf16="off", architecture="topk", k=args.k, hidden_dim=args.d_sae, sae_batch_tokens=args.batch,
                         learning_rate=args.lr, max_epochs=1, seed=0, shuffle_buffer_tokens=args.buffer)
    streamed = side == "streamed"
    return RunSpec(cpu_bf16="off", paths=RunPaths.in_folder(folder), config=config, model=MODEL_NAME, corpus=corpus,
                   training_tokens=tokens, cache_activations="auto" if streamed else "always",
                   disk_budget_bytes=args.disk_budget_mb * 10**6 if streamed else None,
                   layer_number=args.layer, hook_point="resid_post", max_sequence_length=args.context,
                   models_cache_dir=args.models_cache, features=FeatureSettings(max_tokens=args.analysis_tokens))


def worker(args) -> None:
    """One run; its measurements as one JSON line on stdout."""
    import _setup

    _setup.set_threads()
    from engine.run import RunCallbacks, run

    side, tokens, corpus, folder = args.worker[0], int(args.worker[1]), Path(args.worker[2]), Path(args.worker[3])
    phases = Phases()
    spec = run_spec(args, side, tokens, corpus, folder)
    outcome = run(spec, RunCallbacks(on_phase=phases))
    phase = phases.end()
    stats, evaluation = outcome.training_stats, outcome.evaluation
    print(json.dumps({
        "side": side, "tokens_asked": tokens, "phase_s": {name: p["s"] for name, p in phase.items()},
        "phase_peak_rss_bytes": {name: p["peak_rss_bytes"] for name, p in phase.items()},
        "engine_training_s": outcome.result.training_time_seconds,
        "extraction_s": (stats.get("extraction") or {}).get("seconds", 0.0),
        "tokens_trained": stats["tokens_trained"], "activations_cached": stats["activations_cached"],
        "cache_decision": stats["cache_decision"], "activations_path": None if outcome.activations_path is None else str(outcome.activations_path),
        "cache_file": spec.paths.activations.is_file(), "files": sorted(p.name for p in folder.iterdir()),
        "folder_bytes": folder_bytes(folder), "peak_rss_bytes": phases.process_peak,
        "ev": evaluation["explained_variance"], "ce_loss_recovered": evaluation.get("ce_loss_recovered"),
        "l0": evaluation.get("l0"), "features": outcome.features,
    }, default=str))


# --- the comparison --------------------------------------------------------------------------

def run_side(args, side: str, tokens: int, corpus: Path, folder: Path) -> dict:
    command = [sys.executable, __file__, "--worker", side, str(tokens), str(corpus), str(folder),
               "--layer", str(args.layer), "--d-sae", str(args.d_sae), "--k", str(args.k), "--batch", str(args.batch),
               "--lr", str(args.lr), "--context", str(args.context), "--analysis-tokens", str(args.analysis_tokens),
               "--disk-budget-mb", str(args.disk_budget_mb), "--models-cache", str(args.models_cache),
               "--buffer", str(args.buffer)]
    started = time.monotonic()
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, cwd=REPO)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{side} worker ({tokens} tokens) failed with exit status {done.returncode}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    result["training_rss"] = result["phase_peak_rss_bytes"]["training"]
    # Training as the run's phase (the streamed side's includes every forward of the model, its
    # first shuffle block too); end to end adds the cached side's extraction phase.
    result["training_s"] = result["phase_s"].get("training", result["engine_training_s"])
    result["end_to_end_s"] = result["training_s"] + result["phase_s"].get("extracting", 0.0)
    print(f"  {side:8s} {tokens:>7d} tokens: wall {wall:.0f} s, load {os.getloadavg()[0]:.2f}", flush=True)
    return result


def mb(n: int) -> str:
    return f"{n / 1e6:.0f}"


def report_row(label: str, r: dict) -> str:
    phase = r["phase_s"]
    tokens = r["tokens_trained"]
    return (f"{label:16s} {tokens:>7d} {r['wall_s']:7.0f} {phase.get('extracting', 0.0):6.0f} {r['training_s']:6.0f} "
            f"{r['engine_training_s']:6.0f} {tokens / r['training_s']:7.0f} {tokens / r['engine_training_s']:7.0f} "
            f"{tokens / r['end_to_end_s']:7.0f} {phase.get('evaluating', 0.0):5.0f} {phase.get('analyzing', 0.0):5.0f} "
            f"{mb(r['phase_peak_rss_bytes']['training']):>6s} {mb(r['peak_rss_bytes']):>6s} {mb(r['folder_bytes']):>6s} "
            f"{'yes' if r['cache_file'] else 'no':>5s} "
            f"{r['ev']:6.4f} {r['ce_loss_recovered'] or float('nan'):6.4f}")


def budget_check(args, rows: int) -> str:
    """What engine.disk decides for these rows under the budget: the cached run's mode is refused."""
    from engine.disk import DiskFull, plan_disk

    budget = args.disk_budget_mb * 10**6
    plans = {}
    for mode in ("auto", "always"):
        try:
            plan = plan_disk(cache_activations=mode, rows_per_pass=10**9, d_model=576, d_sae=args.d_sae, max_epochs=1,
                             eval_fraction=0.05, training_tokens=rows, free=budget)
            plans[mode] = f"{mode}: needs {mb(plan.needed_bytes)} MB (cache {mb(plan.cache_bytes)} MB), runs"
        except DiskFull as err:
            plans[mode] = f"{mode}: refused, DiskFull (needs {mb(err.plan.needed_bytes)} MB, cache {mb(err.plan.cache_bytes)} MB)"
    return f"engine.disk under the {args.disk_budget_mb} MB budget for {rows} training tokens: " + "; ".join(plans.values())


def report(args, runs: dict, small: dict) -> bool:
    import _setup

    print(f"\nmachine: {_setup.machine()}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"SmolLM2-135M-Instruct layer {args.layer} resid_post; fortunes as JSONL, {LINES_PER_DOCUMENT} lines a document, "
          f"concat packing, context {args.context}; topk k {args.k}, d_sae {args.d_sae}, batch {args.batch} tokens, "
          f"lr {args.lr:g}, one pass, seed 0, shuffle buffer {args.buffer} rows; {args.repeats} pair(s), alternated")
    cache_mb = args.tokens * (576 * 2 + 4) / 1e6
    print(f"streamed: cache_activations auto, disk budget {args.disk_budget_mb} MB (its cache: {cache_mb:.0f} MB for the "
          f"training tokens, more with the held-out tail); "
          f"cached: always, no budget. Feature analysis of the streamed side on its first {args.analysis_tokens} rows "
          f"(the model runs again), of the cached side on its whole cache")
    print(f"\n{'run':16s} {'tokens':>7s} {'wall s':>7s} {'extr s':>6s} {'train':>6s} {'eng tr':>6s} {'tok/s':>7s} "
          f"{'eng t/s':>7s} {'e2e t/s':>7s} {'eval':>5s} {'anal':>5s} {'RSS tr':>6s} {'RSS MB':>6s} {'dir MB':>6s} {'cache':>5s} "
          f"{'EV':>6s} {'CE rec':>6s}")
    for side in SIDES:
        for i, r in enumerate(runs[side]):
            print(report_row(f"{side} #{i + 1}", r))
    print(report_row("streamed 1/4", small))
    for r in [*runs["streamed"], small]:
        print(f"streamed {r['tokens_trained']} tokens: activations_cached {r['activations_cached']}, cache_decision "
              f"{r['cache_decision']!r}; left in its folder: {', '.join(r['files'])}")
    print(f"cached: cache_decision {runs['cached'][0]['cache_decision']!r}; left: {', '.join(runs['cached'][0]['files'])}")
    for label, r in [*((f"{side} #{i + 1}", r) for side in SIDES for i, r in enumerate(runs[side])), ("streamed 1/4", small)]:
        print(f"peak RSS MB by phase, {label}: " + ", ".join(f"{k} {mb(v)}" for k, v in r["phase_peak_rss_bytes"].items()))
    print("columns: seconds of the extracting and training phases (on_phase), eng tr = the engine's training_time_seconds; "
          "tok/s = tokens_trained / training phase, eng t/s = / training_time_seconds, e2e t/s = / (extraction + training); "
          "eval, anal = evaluating and analyzing phases; RSS tr = peak RSS of the training phase, RSS MB = of the process")
    print(budget_check(args, runs["cached"][0]["tokens_trained"]))

    median = lambda side, key: statistics.median(r[key] for r in runs[side])  # noqa: E731
    tokens = {side: median(side, "tokens_trained") for side in SIDES}
    e2e = {side: tokens[side] / median(side, "end_to_end_s") for side in SIDES}
    train = {side: tokens[side] / median(side, "training_s") for side in SIDES}
    ev_gap = abs(median("streamed", "ev") - median("cached", "ev"))
    print(f"\nstreamed / cached tokens/s, end to end (tokens / (extraction + training)): {e2e['streamed'] / e2e['cached']:.2f}x")
    print(f"streamed / cached tokens/s, training phase only (the streamed one runs the model): "
          f"{train['streamed'] / train['cached']:.2f}x")
    print(f"streamed / cached process wall: {median('streamed', 'wall_s') / median('cached', 'wall_s'):.2f}x")
    print(f"peak RSS of the training phase, streamed: {mb(small['phase_peak_rss_bytes']['training'])} MB at "
          f"{small['tokens_trained']} tokens, {mb(median('streamed', 'training_rss'))} MB at {tokens['streamed']:.0f}; "
          f"cached {mb(median('cached', 'training_rss'))} MB")
    print(f"peak RSS of the process, streamed: {mb(small['peak_rss_bytes'])} MB at {small['tokens_trained']} tokens, "
          f"{mb(median('streamed', 'peak_rss_bytes'))} MB at {tokens['streamed']:.0f} tokens "
          f"(x{median('streamed', 'peak_rss_bytes') / small['peak_rss_bytes']:.2f} for x{tokens['streamed'] / small['tokens_trained']:.1f} tokens); "
          f"cached {mb(median('cached', 'peak_rss_bytes'))} MB")
    ok_ev = ev_gap <= args.ev_tolerance
    no_cache = not any(r["activations_cached"] or r["cache_file"] for r in [*runs["streamed"], small])
    print(f"|EV streamed - EV cached| = {ev_gap:.4f} (tolerance {args.ev_tolerance}: {'ok' if ok_ev else 'EXCEEDED'}); "
          f"streamed sides wrote no cache: {'yes' if no_cache else 'NO'}")
    return ok_ev and no_cache


def main() -> None:
    args = parse_args()
    args.models_cache = args.models_cache or args.cache / "models"
    sys.path.insert(0, str(REPO / "bench"))
    if args.worker:
        return worker(args)
    args.cache.mkdir(parents=True, exist_ok=True)
    runs = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="mistudio-streaming-") as tmp:
        tmp = Path(tmp)
        corpus = corpus_jsonl(args.cache, tmp / "fortunes.jsonl")
        print(f"corpus: {corpus} ({sum(1 for _ in open(corpus))} documents); {args.repeats} pair(s)", flush=True)
        for repeat in range(args.repeats):
            order = SIDES if repeat % 2 == 0 else SIDES[::-1]
            for side in order:
                folder = tmp / f"{side}-{repeat}"
                runs[side].append(run_side(args, side, args.tokens, corpus, folder))
                subprocess.run(["rm", "-rf", str(folder)], check=True)  # the next side finds the disk as this one did
        small = run_side(args, "streamed", args.tokens // 4, corpus, tmp / "streamed-quarter")
    if not report(args, runs, small):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
