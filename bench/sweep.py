"""A sweep of 8 SAEs against the same 8 as separate jobs: does one language-model forward per
batch for every member (`manage.py train --sweep FILE`) train the family faster than 8 queued
`manage.py train` jobs, and do its members come out as the separate jobs do?

Members: SmolLM2-135M-Instruct (the bundled GGUF, by its name), 2 layers (--layers, default 10 and
20 of 30, resid_post) x 4 SAE settings (TopK k 16, 32, 64 and BatchTopK k 32), d_sae 4 x 576, the
same training_tokens (--tokens), SAE batch, learning rate, one pass, seed 0 and corpus (Debian's
fortunes, bench/english_corpus.py, one line per sequence, context 128, LM batch 16) for all.

- A, separate: each member as one whole `manage.py train` process, one after another (as a user's 8
  queued jobs run on one worker); each loads the model and reads the corpus through it itself.
- B, sweep: one whole `manage.py train --sweep FILE` process, FILE the body of POST /api/v1/sweeps
  (the shared fields, `layers`, `hook_points`, `members`).
- C, SAELens (when the bench venv exists, --bench-python): sae-lens' MultiSAETrainingRunner (in
  6.54.12: sae_lens/multi_sae_training_runner.py, "V1", programmatic config only), the same 8 SAEs
  on one shared forward per batch, as one whole process: HookedProxyLM (`model_class_name=
  "AutoModelForCausalLM"`, hooks `model.layers.{L}` = resid_post, as bench/smollm2.py) on the
  float32 HF folder the app converted from the same GGUF, offline, the same lines as a dataset
  (packed into contexts, its text path), the same tokens, d_sae, k, batch, lr (1% warm-up, linear
  decay over the last 20%) and input scaling to mean norm sqrt(d_model). What differs by design:
  it fills a mixing buffer of min(65,536, tokens) activations before its first step, and it cannot
  take cached activations in multi-hook mode (its V1 limitations), so each of its steps runs on
  fresh forwards; lr and batch are the runner's, shared by its SAEs (ours' members may differ).

A and B: the same MISTUDIO settings (bench/_sweep_sides.py app_env: a MISTUDIO_SECRET_KEY, one pass
with MISTUDIO_MIN_SAE_STEPS=0, MISTUDIO_TOPK_DECODE --topk-decode), each side its own MISTUDIO_DATA_DIR
and database in a temporary folder, one shared MISTUDIO_MODELS_CACHE_DIR into which an untimed
warm-up job converts the GGUF once. Everything else is the app's default: a separate one-pass job
streams its rows (cache_activations auto) and its feature analysis runs the model again; a sweep
member trains on its site's cache file.

Report: the wall of each side (A: its 8 processes end to end), the ratio A / B (goal: >= 3x on the
CPU) and A / C; the sweep's lm_forward_batches and tokens_extracted against the separate jobs' sum
(their rows, training_stats.tokens; their sequences, from the extraction stats or, for a streamed
job, its sequence_starts file; forward batches = ceil(sequences / batch_size)); per member EV, L0
and CE loss recovered of A and B from their own result documents (the same held-out rows: the
last 5% of the same rows), |dEV| and |dL0| / L0, flagged beyond --ev-tolerance / --l0-tolerance
(same seed, same rows: they should agree). With C, a shared scoring (bench/_lm_scoring.py, plain
HF hooks on the converted model, --score-lines of english_corpus's heldout.txt that no side
trained on) of B's and C's SAEs from their SAELens-format folders: EV, L0, CE recovered. Exit 1
when a member did not complete or a delta exceeds its tolerance.

Run in the app's .venv from the repository root (python3 bench/english_corpus.py is run for the
corpus when CACHE/corpus is missing; the bench venv of bench/README.md adds side C):
    .venv/bin/python bench/sweep.py --tokens 4000 --score-lines 8     # a try
    .venv/bin/python bench/sweep.py                                    # 20,000 tokens per member
"""

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from _sweep_sides import (forward_batches, member_name, new_secret_key, saelens_side, saelens_worker,  # noqa: E402
                          separate_jobs, sweep_job, warm_up)

MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
SETTINGS = {"topk16": {"architecture": "topk", "k": 16}, "topk32": {"architecture": "topk", "k": 32},
            "topk64": {"architecture": "topk", "k": 64}, "batchtopk32": {"architecture": "batchtopk", "k": 32}}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=20_000, help="training_tokens of every member, all sides")
    parser.add_argument("--layers", default="10,20", help="of 30, resid_post")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"SAE settings of the members, of {', '.join(SETTINGS)}")
    parser.add_argument("--d-sae", type=int, default=4 * 576)
    parser.add_argument("--batch", type=int, default=1024, help="SAE batch, tokens")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--context", type=int, default=128, help="max_sequence_length")
    parser.add_argument("--lm-batch", type=int, default=16, help="sequences per LM forward (batch_size)")
    parser.add_argument("--topk-decode", default="auto", choices=["auto", "dense", "sparse"],
                        help="MISTUDIO_TOPK_DECODE, both sides (sparse refuses batchtopk)")
    parser.add_argument("--ev-tolerance", type=float, default=0.01, help="|EV sweep - EV separate| flagged beyond")
    parser.add_argument("--l0-tolerance", type=float, default=0.05, help="|L0 sweep - L0 separate| / L0 flagged beyond")
    parser.add_argument("--score-lines", type=int, default=16, help="held-out lines for the shared scoring of B and C")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mistudio-bench")
    parser.add_argument("--models-cache", type=Path, default=None, help="MISTUDIO_MODELS_CACHE_DIR; default CACHE/models")
    parser.add_argument("--out", type=Path, default=None, help="default: CACHE/results")
    parser.add_argument("--app-repo", type=Path, default=REPO, help="the checkout whose manage.py trains A and B")
    parser.add_argument("--app-python", type=Path, default=None, help="default: APP_REPO/.venv/bin/python")
    parser.add_argument("--bench-python", type=Path, default=REPO / ".venv-bench" / "bin" / "python",
                        help="the bench venv's python, for side C (skipped when missing)")
    parser.add_argument("--skip-saelens", action="store_true")
    parser.add_argument("--saelens-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.layers = [int(x) for x in args.layers.split(",") if x.strip()]
    unknown = [name for name in args.settings.split(",") if name not in SETTINGS]
    if unknown:
        parser.error(f"--settings: unknown {', '.join(unknown)}; use some of {', '.join(SETTINGS)}")
    args.settings = [SETTINGS[name] for name in args.settings.split(",")]
    args.model = MODEL_NAME
    args.models_cache = args.models_cache or args.cache / "models"
    args.out = args.out or args.cache / "results"
    args.app_repo = args.app_repo.resolve()
    args.app_python = args.app_python or args.app_repo / ".venv" / "bin" / "python"
    return args


# --- the corpus and the model --------------------------------------------------------------------

def corpus_folder(cache: Path) -> Path:
    import subprocess

    folder = cache / "corpus"
    if not (folder / "train.txt").is_file():
        subprocess.run([sys.executable, str(BENCH / "english_corpus.py"), "--out", str(folder)], check=True)
    return folder


def read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def converted_model(models_cache: Path) -> Path:
    """The float32 HF folder the app converted the bundled GGUF into (the warm-up made it)."""
    folders = sorted(p.parent for p in models_cache.glob("SmolLM2-135M-Instruct*/config.json"))
    if not folders:
        raise SystemExit(f"no converted SmolLM2 folder in {models_cache}: did the warm-up job run?")
    return folders[0]


def lines_for_tokens(lines: list[str], tokenizer, tokens: int, context: int) -> list[str]:
    """The first lines whose rows (a line's tokens, truncated so BOS + them fit `context`) reach
    `tokens`: what a job with that budget reads, its held-out tail included."""
    out, total = [], 0
    for line in lines:
        out.append(line)
        total += min(len(tokenizer(line, add_special_tokens=False)["input_ids"]), context - 1)
        if total >= tokens:
            return out
    raise SystemExit(f"the corpus has only {total} tokens, not {tokens}: lower --tokens")


# --- the comparison ------------------------------------------------------------------------------

def metrics_of(document: dict) -> dict:
    evaluation = document.get("evaluation") or document.get("metrics") or {}
    return {k: evaluation.get(k) for k in ("explained_variance", "l0", "ce_loss_recovered", "mse")}


def sweep_members(document: dict) -> dict:
    """The sweep document's members by name (layer, architecture, and k from the overrides every
    member here states)."""
    out = {}
    for member in document.get("members", []):
        settings = {"architecture": member.get("architecture"), **(member.get("settings") or {})}
        out[member_name(member["layer_number"], settings)] = member
    return out


def shared_scoring(args, model_folder: Path, folders: dict, heldout: list[str]) -> dict:
    """EV, L0, CE recovered of every SAE (name -> SAELens-format folder) on the same held-out lines,
    one bench/_lm_scoring.score per layer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from _lm_scoring import encode_sequences, load_saelens_folder, score

    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32).eval()
    sequences = encode_sequences(tokenizer, heldout, convention="special", context=args.context, max_tokens=None)
    out = {}
    for layer in args.layers:
        saes = {name: load_saelens_folder(Path(folder)) for name, folder in folders.items() if name.split("/")[-1].startswith(f"L{layer}-")}
        scores = score(model, tokenizer, sequences, module_name=f"model.layers.{layer}", saes=saes, convention="special",
                       batch_size=args.lm_batch)
        out[f"_L{layer}"] = scores.pop("_")
        out.update(scores)
    return out


def delta_row(name: str, separate: dict, swept: dict, args) -> dict:
    d_ev = abs(swept["explained_variance"] - separate["explained_variance"])
    d_l0 = abs(swept["l0"] - separate["l0"]) / separate["l0"] if separate["l0"] else math.inf
    ce_a, ce_b = separate.get("ce_loss_recovered"), swept.get("ce_loss_recovered")
    flags = [f"|dEV| > {args.ev_tolerance}"] if not d_ev <= args.ev_tolerance else []
    flags += [f"|dL0|/L0 > {args.l0_tolerance}"] if not d_l0 <= args.l0_tolerance else []
    return {"member": name, "separate": separate, "sweep": swept, "d_ev": d_ev, "d_l0_rel": d_l0,
            "d_ce_rec": None if ce_a is None or ce_b is None else abs(ce_b - ce_a), "flags": flags}


def _f(value, spec=".4f") -> str:
    return "-" if value is None else format(value, spec)


def report(args, sides: dict, rows: list[dict], scored: dict | None) -> dict:
    import _setup

    a, b, c = sides["separate"], sides["sweep"], sides.get("saelens")
    doc = b["document"]
    print(f"\nmachine: {_setup.machine()}; load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    settings = ", ".join(f"{s['architecture']} k {s['k']}" for s in args.settings)
    print(f"SmolLM2-135M-Instruct layers {args.layers} resid_post x {len(args.settings)} settings "
          f"({settings}); d_sae {args.d_sae}, {args.tokens} "
          f"training tokens per member, SAE batch {args.batch}, lr {args.lr:g}, one pass, seed 0; context {args.context}, "
          f"LM batch {args.lm_batch}; MISTUDIO_TOPK_DECODE {args.topk_decode}")
    walls = [r["wall_s"] for r in a["runs"]]
    print(f"\nA separate: {len(walls)} processes, {a['wall_s']:.0f} s end to end (each {', '.join(f'{w:.0f}' for w in walls)} s; "
          f"median {statistics.median(walls):.0f}); load average at their starts {min(r['load_before'] for r in a['runs']):.2f}-"
          f"{max(r['load_before'] for r in a['runs']):.2f}")
    print(f"B sweep: one process, {b['wall_s']:.0f} s (load average at its start {b['load_before']:.2f}), exit {b['returncode']}, "
          f"status {doc.get('status')}, its extraction {_f(doc.get('extraction_seconds'), '.0f')} s")
    ratio = a["wall_s"] / b["wall_s"]
    print(f"A / B wall = {ratio:.2f}x (goal >= 3x: {'met' if ratio >= 3 else 'NOT met'})")
    if c:
        print(f"C SAELens {c['result']['sae_lens']} MultiSAETrainingRunner: one process, {c['wall_s']:.0f} s "
              f"(its training {c['result']['training_s']:.0f} s, load average at its start {c['load_before']:.2f}); "
              f"A / C = {a['wall_s'] / c['wall_s']:.2f}x, C / B = {c['wall_s'] / b['wall_s']:.2f}x")

    sequences = [r["sequences"] for r in a["runs"]]
    rows_a = sum((r["document"].get("training_stats") or {}).get("tokens", 0) for r in a["runs"])
    batches_a = sum(forward_batches(s, args.lm_batch) or 0 for s in sequences)
    print(f"\nextraction: sweep lm_forward_batches {doc.get('lm_forward_batches')}, tokens_extracted {doc.get('tokens_extracted')}; "
          f"separate jobs' sum: {sum(s or 0 for s in sequences)} sequences = {batches_a} forward batches of {args.lm_batch}, "
          f"{rows_a} rows (training_stats.tokens)" + (" (a job's sequence count was missing)" if None in sequences else ""))
    if doc.get("lm_forward_batches"):
        print(f"  forward batches separate / sweep = {batches_a / doc['lm_forward_batches']:.2f}x; rows separate / "
              f"sweep tokens_extracted = {rows_a / max(1, doc.get('tokens_extracted') or 1):.2f}x")

    print(f"\n{'member':22s} {'EV sep':>7s} {'EV swp':>7s} {'|dEV|':>7s} {'L0 sep':>7s} {'L0 swp':>7s} {'dL0/L0':>7s} "
          f"{'CE sep':>7s} {'CE swp':>7s} {'|dCE|':>7s}  flags")
    for r in rows:
        s, w = r["separate"], r["sweep"]
        print(f"{r['member']:22s} {_f(s['explained_variance'])} {_f(w['explained_variance'])} {r['d_ev']:7.4f} "
              f"{_f(s['l0'], '7.2f')} {_f(w['l0'], '7.2f')} {r['d_l0_rel']:7.4f} {_f(s['ce_loss_recovered'])} "
              f"{_f(w['ce_loss_recovered'])} {_f(r['d_ce_rec'], '7.4f')}  {'; '.join(r['flags']) or 'ok'}")
    print(f"tolerances: |dEV| <= {args.ev_tolerance}, |dL0| / L0 <= {args.l0_tolerance} (each side's own result: the "
          f"same held-out rows)")
    if scored:
        print(f"\nshared scoring on {args.score_lines} held-out lines "
              + ", ".join(f"layer {k[2:]}: {v['predicted_tokens']} predicted tokens, CE clean {v['ce_loss_clean']:.3f}, "
                          f"zero-ablated {v['ce_loss_zero_ablation']:.3f}" for k, v in scored.items() if k.startswith("_L")))
        print(f"{'member':22s} {'EV B':>7s} {'EV C':>7s} {'L0 B':>7s} {'L0 C':>7s} {'CE B':>7s} {'CE C':>7s} {'dead B':>6s} {'dead C':>6s}")
        for r in rows:
            sb, sc = scored.get(f"B/{r['member']}"), scored.get(f"C/{r['member']}")
            if sb and sc:
                print(f"{r['member']:22s} {sb['ev']:7.4f} {sc['ev']:7.4f} {sb['l0']:7.2f} {sc['l0']:7.2f} "
                      f"{sb['ce_loss_recovered']:7.4f} {sc['ce_loss_recovered']:7.4f} {sb['dead']:6d} {sc['dead']:6d}")
    return {"ratio_separate_over_sweep": ratio, "forward_batches_separate": batches_a, "rows_separate": rows_a}


def main() -> None:
    # One experiment read top to bottom (a script's main, over 60 lines on purpose).
    args = parse_args()
    if args.saelens_worker:
        return saelens_worker(args.saelens_worker)
    args.secret_key = new_secret_key()
    args.cache.mkdir(parents=True, exist_ok=True)
    members = [(layer, dict(settings)) for layer in args.layers for settings in args.settings]
    with_saelens = not args.skip_saelens and args.bench_python.is_file()
    if not with_saelens:
        print(f"side C (SAELens) skipped: {'--skip-saelens' if args.skip_saelens else f'no {args.bench_python}'}")
    lines = read_lines(corpus_folder(args.cache) / "train.txt")
    heldout = read_lines(args.cache / "corpus" / "heldout.txt")[: args.score_lines]
    sides = {}
    with tempfile.TemporaryDirectory(prefix="mistudio-sweep-") as tmp:
        tmp = Path(tmp)
        warmup_corpus = tmp / "warmup.txt"
        warmup_corpus.write_text("\n".join(lines[:60]) + "\n", encoding="utf-8")
        warm_up(args, tmp / "warmup", warmup_corpus)
        model_folder = converted_model(args.models_cache)
        from transformers import AutoTokenizer

        wanted = math.ceil(args.tokens / 0.95) + 2 * args.context  # a job holds out its last 5%
        train_lines = lines_for_tokens(lines, AutoTokenizer.from_pretrained(model_folder), wanted, args.context)
        corpus_file = tmp / "train.txt"
        corpus_file.write_text("\n".join(train_lines) + "\n", encoding="utf-8")
        print(f"corpus: {len(train_lines)} lines for ~{wanted} rows; {len(members)} members; converted model {model_folder}",
              flush=True)
        sides["separate"] = separate_jobs(args, tmp / "separate", corpus_file, members)
        sides["sweep"] = sweep_job(args, tmp / "sweep", corpus_file, members)
        if with_saelens:
            sides["saelens"] = saelens_side(args, tmp / "saelens", model_folder, train_lines, members)

        swept = sweep_members(sides["sweep"]["document"])
        rows, failed = [], []
        for run in sides["separate"]["runs"]:
            name = member_name(run["layer"], run["settings"])
            member = swept.get(name)
            if run["returncode"] != 0 or run["document"].get("status") != "completed":
                failed.append(f"separate {name}: {run['document'].get('status')} {run['document'].get('message')}")
            if member is None or member.get("status") != "completed":
                failed.append(f"sweep {name}: " + ("missing" if member is None else f"{member.get('status')} {member.get('message')}"))
                continue
            rows.append(delta_row(name, metrics_of(run["document"]), metrics_of(member), args))
        scored = None
        if with_saelens and args.score_lines:
            folders = {f"C/{name}": folder for name, folder in sides["saelens"]["folders"].items()}
            for name, member in swept.items():
                # A member's SAELens export, where its job's writes it (MISTUDIO_DATA_DIR/models).
                export = tmp / "sweep" / "data" / "models" / f"{member['job_id']}_saelens"
                if export.is_dir():
                    folders[f"B/{name}"] = str(export)
            started = time.monotonic()
            scored = shared_scoring(args, model_folder, folders, heldout)
            print(f"shared scoring: {time.monotonic() - started:.0f} s", flush=True)
        summary = report(args, sides, rows, scored)

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"sweep_{time.strftime('%Y%m%d_%H%M%S')}.json"
    import _setup

    document = {"machine": _setup.machine(), "args": {k: str(v) for k, v in vars(args).items() if k != "secret_key"},
                "summary": summary, "rows": rows, "shared_scoring": scored, "failed": failed,
                "sides": {name: {k: v for k, v in side.items() if k != "stderr_tail"} for name, side in sides.items()}}
    path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"written {path}")
    for line in failed:
        print(f"NOT COMPLETED: {line}")
    if failed or any(r["flags"] for r in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
