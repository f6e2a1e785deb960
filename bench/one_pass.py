"""A one-pass streamed job, ours against SAELens, each a whole process (issue 25, item 3).

Both sides train the same TopK SAE (k, d_sae, SAE batch tokens, learning rate with 1% warm-up and
a decay over the last 20%, one pass over --tokens tokens) at the same layer of the same model (the
random Llama-shaped LM with GPT-2's vocabulary of bench/real_sizes.py, or --model FOLDER) on the
same JSONL documents, packed into windows of --context tokens, --lm-batch sequences a forward, 2
torch threads each:

- ours: `manage.py train` in the app's .venv with `--cache-activations never` (the rows stream from
  the model to the SAE through a shuffle block) and everything it does after training at its
  defaults: evaluation (reconstruction metrics and next-token loss on the held-out tail), feature
  analysis, the SAE and SAELens exports, the metadata;
- SAELens: `LanguageModelSAETrainingRunner` (HookedProxyLM through `AutoModelForCausalLM`), its
  mixing buffer as large as our shuffle block; after training it saves the SAE and nothing else
  (no evaluation without wandb).

Per side: process wall, tokens/s over the wall, peak RSS (the process's, from wait4), and EV and
L0 of both SAEs from one scoring function on the same held-out documents (bench/_lm_scoring.py,
plain HF hooks on the SAELens-format folders both write). Run in the bench venv from the
repository root:

    .venv-bench/bin/python bench/one_pass.py --tokens 1000000
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

SHUFFLE_BUFFER_TOKENS = 65_536  # TrainConfig.shuffle_buffer_tokens, our default


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--model", type=Path, default=None, help="an HF causal LM folder; default the bench's random Llama")
    parser.add_argument("--layer", type=int, default=2)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--lm-batch", type=int, default=32)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096, help="SAE batch, tokens")
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--heldout-documents", type=int, default=40)
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mistudio-bench" / "real-sizes")
    parser.add_argument("--app-python", type=Path, default=REPO / ".venv" / "bin" / "python")
    parser.add_argument("--saelens-worker", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def run_measured(command, *, env=None) -> tuple[str, float, int]:
    """(stdout, wall seconds, peak RSS bytes): the command under a small wrapper that reads the
    child's own rusage (wait4), so RSS is that process's, not this one's."""
    wrapper = ("import os, subprocess, sys, time, json\n"
               "started = time.monotonic()\n"
               "p = subprocess.Popen(sys.argv[1:])\n"
               "_, status, usage = os.wait4(p.pid, 0)\n"
               "print(json.dumps({'wall': time.monotonic() - started, 'maxrss_kb': usage.ru_maxrss, 'status': status}),"
               " file=sys.stderr)\n"
               "sys.exit(1 if status else 0)\n")
    done = subprocess.run([sys.executable, "-c", wrapper, *map(str, command)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(map(str, command[:4]))} failed:\n{done.stderr[-3000:]}")
    measured = json.loads(done.stderr.strip().splitlines()[-1])
    return done.stdout, measured["wall"], measured["maxrss_kb"] * 1024


def documents(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def ours(args, model: Path, corpus: Path, folder: Path) -> dict:
    env = {**os.environ, "MISTUDIO_DEBUG": "1", "MISTUDIO_DATA_DIR": str(folder / "data"),
           "DATABASE_URL": f"sqlite:///{folder / 'db.sqlite3'}", "MISTUDIO_MIN_SAE_STEPS": "0", "OMP_NUM_THREADS": "2"}
    subprocess.run([str(args.app_python), "manage.py", "migrate", "-v0"], cwd=REPO, env=env, check=True)
    command = [args.app_python, "manage.py", "train", "--model", model, "--corpus", corpus, "--no-progress",
               "--layer-number", args.layer, "--architecture", "topk", "--k", args.k, "--hidden-dim", args.d_sae,
               "--max-epochs", "1", "--min-loss", "0", "--training-tokens", args.tokens, "--cache-activations", "never",
               "--max-sequence-length", args.context, "--batch-size", args.lm_batch, "--sae-batch-tokens", args.batch,
               "--learning-rate", args.lr]
    out, wall, rss = run_measured(command, env=env)
    result = json.loads(out[out.rindex("\n{") + 1 if "\n{" in out else out.index("{"):])
    stats = result["training_stats"]
    folder_of_export = Path(result["exports"]["saelens"])
    return {"wall_s": wall, "peak_rss_bytes": rss, "tokens": stats["tokens_trained"], "saelens_folder": folder_of_export,
            "training_s": stats.get("training_time_seconds"), "evaluation": result["evaluation"],
            "features": result.get("features")}


def saelens(args, model: Path, texts: list[str], folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "saelens.json"
    spec.write_text(json.dumps({"model": str(model), "texts": texts, "out": str(folder / "saelens_sae"),
                                "args": {k: v for k, v in vars(args).items() if isinstance(v, (int, float))}}))
    out, wall, rss = run_measured([sys.executable, __file__, "--saelens-worker", spec],
                                  env={**os.environ, "OMP_NUM_THREADS": "2"})
    reported = json.loads(out.strip().splitlines()[-1])
    return {"wall_s": wall, "peak_rss_bytes": rss, "saelens_folder": folder / "saelens_sae", **reported}


def saelens_worker(spec_file: Path) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(2)
    torch.set_num_interop_threads(1)
    from datasets import Dataset
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig, TopKTrainingSAEConfig
    from transformers import AutoConfig

    spec = json.loads(spec_file.read_text())
    a = argparse.Namespace(**spec["args"])
    d_in = AutoConfig.from_pretrained(spec["model"]).hidden_size
    steps = a.tokens // a.batch
    cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(k=a.k, d_in=d_in, d_sae=a.d_sae, dtype="float32", device="cpu",
                                  normalize_activations="expected_average_only_in"),
        model_name=spec["model"], model_class_name="AutoModelForCausalLM", hook_name=f"model.layers.{a.layer}",
        dataset_path="", is_dataset_tokenized=False, streaming=False, context_size=a.context, prepend_bos=True,
        training_tokens=a.tokens, train_batch_size_tokens=a.batch, store_batch_size_prompts=a.lm_batch,
        n_batches_in_buffer=max(2 * a.batch, SHUFFLE_BUFFER_TOKENS) // a.context,
        lr=a.lr, lr_scheduler_name="constant", lr_warm_up_steps=round(0.01 * steps), lr_decay_steps=round(0.2 * steps),
        device="cpu", seed=0, logger=LoggingConfig(log_to_wandb=False), n_checkpoints=0, checkpoint_path=None,
        output_path=None, verbose=False,
    )
    runner = LanguageModelSAETrainingRunner(cfg, override_dataset=Dataset.from_dict({"text": spec["texts"]}))
    started = time.monotonic()
    sae = runner.run()
    training_s = time.monotonic() - started
    runner.save_final_sae(sae, spec["out"])
    print(json.dumps({"training_s": training_s, "tokens": a.tokens}))


def shared_scores(args, model: Path, heldout: list[str], folders: dict) -> dict:
    """EV and L0 of every SAE on the same held-out documents, by one function (_lm_scoring)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from _lm_scoring import encode_sequences, load_saelens_folder, score

    torch.set_num_threads(2)
    lm = AutoModelForCausalLM.from_pretrained(model).eval()
    tokenizer = AutoTokenizer.from_pretrained(model)
    sequences = encode_sequences(tokenizer, heldout, convention="special", context=args.context, max_tokens=20_000)
    saes = {name: load_saelens_folder(folder) for name, folder in folders.items()}
    return score(lm, tokenizer, sequences, module_name=f"model.layers.{args.layer}", saes=saes, convention="special",
                 batch_size=8, with_ablation=False)


def main() -> None:
    args = parse_args()
    if args.saelens_worker:
        return saelens_worker(args.saelens_worker)
    import _setup
    from real_sizes import corpus

    model = args.model or args.cache / "model-128x4"
    if not (model / "config.json").is_file():
        _setup.build_model(model, hidden_size=128, layers=4)
    path = corpus(args.cache, args.tokens)
    texts = documents(path)
    heldout = texts[-args.heldout_documents:]  # past what either side reads: the corpus holds 1.2x the tokens
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        print(f"ours, {args.tokens:,} tokens ...", flush=True)
        a = ours(args, model, path, folder / "ours")
        print(json.dumps({k: v for k, v in a.items() if k != "saelens_folder"}, default=str), flush=True)
        print(f"SAELens, {args.tokens:,} tokens ...", flush=True)
        b = saelens(args, model, texts[: -args.heldout_documents], folder / "saelens")
        print(json.dumps({k: v for k, v in b.items() if k != "saelens_folder"}, default=str), flush=True)
        scores = shared_scores(args, model, heldout, {"ours": a["saelens_folder"], "saelens": b["saelens_folder"]})
    print(f"\nmachine: {_setup.machine()}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{model.name}, layer {args.layer}; JSONL documents, windows of {args.context}, {args.lm_batch} a forward; TopK "
          f"k {args.k}, d_sae {args.d_sae}, SAE batch {args.batch}, lr {args.lr:g}; one pass, streamed")
    print(f"{'side':8s} {'tokens':>10s} {'wall s':>7s} {'tok/s':>7s} {'train s':>7s} {'peak MB':>7s} {'EV':>6s} {'L0':>6s}")
    for name, side in (("ours", a), ("SAELens", b)):
        s = scores["ours" if name == "ours" else "saelens"]
        print(f"{name:8s} {side['tokens']:>10,d} {side['wall_s']:7.0f} {side['tokens'] / side['wall_s']:7.0f} "
              f"{side['training_s'] or float('nan'):7.0f} {side['peak_rss_bytes'] / 1e6:7.0f} {s['ev']:6.3f} {s['l0']:6.1f}")
    print(f"ours / SAELens tokens/s over the whole process: {(a['tokens'] / a['wall_s']) / (b['tokens'] / b['wall_s']):.2f}x")
    print(f"ours after training: evaluation ({a['evaluation']['eval_tokens']:,} rows, {a['evaluation'].get('ce_eval_tokens')} "
          f"next-token predictions, CE recovered {a['evaluation'].get('ce_loss_recovered')}), feature analysis "
          f"({(a['features'] or {}).get('analyzed_tokens')} tokens), SAE and SAELens exports; SAELens: saves the SAE")


if __name__ == "__main__":
    main()
