"""bench/smollm2.py's two contenders, each trained by a whole process: ours, `manage.py train` in
the app's venv (the part that follows the app's CLI), and SAELens' runner, run as
`smollm2.py --saelens-worker SPEC` in the bench venv."""
import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from _setup import TrainFailed, run_train

from engine.evaluation.next_token import DEFAULT_MAX_TOKENS as APP_CE_MAX_TOKENS
from engine.trainer.config import TrainConfig

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
APP_HELDOUT_FRACTION = TrainConfig.eval_fraction
OURS_SHUFFLE_BUFFER_TOKENS = TrainConfig.shuffle_buffer_tokens


def hf_module_name(hook_point: str, layer: int) -> str:
    """The HF module whose output is the hook point (SAELens' HookedProxyLM hook_name too)."""
    if hook_point == "resid_post":
        return f"model.layers.{layer}"
    if hook_point == "resid_pre":
        return f"model.layers.{layer - 1}" if layer > 0 else "model.embed_tokens"
    if hook_point == "mlp_out":
        return f"model.layers.{layer}.mlp"
    if hook_point == "attn_out":
        return f"model.layers.{layer}.self_attn"
    raise SystemExit(f"unknown hook point {hook_point}")


# --- ours: manage.py train in the app's venv (the part that follows the app's CLI) ----------

def ours_env(folder: Path) -> dict:
    return {**os.environ, "MISTUDIO_DEBUG": "1", "MISTUDIO_DATA_DIR": str(folder / "data"),
            "MISTUDIO_MODELS_DIR": str(folder / "models"), "DATABASE_URL": f"sqlite:///{folder / 'db.sqlite3'}",
            # one pass, as SAELens: no floor of 1,000 steps repeating epochs
            "MISTUDIO_MIN_SAE_STEPS": "0", "OMP_NUM_THREADS": "2"}


def ours_cli_args(args, architecture: str) -> list[str]:
    """The job, as `manage.py train` options. --hook-point, --prepend-bos and
    --exclude-special-tokens are the new job fields (defaults resid_post / true / true): passed only
    when the CLI has them, so the bench runs before and after they land."""
    options = ["--layer-number", str(args.layer), "--architecture", architecture, "--hidden-dim", str(args.d_sae),
               "--max-epochs", "1", "--min-loss", "0", "--max-sequence-length", str(args.context),
               "--batch-size", str(args.lm_batch), "--sae-batch-tokens", str(args.batch),
               "--learning-rate", str(args.lr)]
    if architecture == "topk":
        options += ["--k", str(args.k)]
    else:
        options += ["--sparsity-coeff", str(args.sparsity_coeff)]
    help_text = ours_help(args)
    if "--hook-point" in help_text:
        options += ["--hook-point", args.hook_point]
    if "--prepend-bos" in help_text:
        options += ["--prepend-bos", "--exclude-special-tokens"]  # the defaults, said: as SAELens here
    elif args.hook_point != "resid_post":
        raise SystemExit("this checkout's manage.py train has no --hook-point: only resid_post (a block's output) runs")
    return options


_HELP: dict = {}


def ours_help(args) -> str:
    key = (args.app_repo, args.app_python)
    if key not in _HELP:
        _HELP[key] = subprocess.run([str(args.app_python), "manage.py", "train", "--help"], cwd=args.app_repo,
                                    capture_output=True, text=True, env={**os.environ, "MISTUDIO_DEBUG": "1"}).stdout
    return _HELP[key]


def ours_run(args, folder: Path, corpus_file: Path, architecture: str) -> dict:
    """One whole `manage.py train` process: (its result document, wall seconds, sequence_starts)."""
    import numpy as np

    env = ours_env(folder)
    command = [str(args.app_python), "manage.py", "train", "--model", args.ours_model, "--corpus", str(corpus_file),
               "--no-progress", *ours_cli_args(args, architecture)]
    try:
        result, wall = run_train(command, cwd=args.app_repo, env=env, label=architecture)
    except TrainFailed as failed:
        raise SystemExit(str(failed)) from None
    activations = Path(result["activations_path"])
    starts_file = activations.with_name(activations.name.replace("_activations.npy", "_activations_sequence_starts.npy"))
    starts = np.load(starts_file).tolist()
    for path in activations.parent.glob(activations.name.replace(".npy", "*.npy")):
        path.unlink()  # hundreds of MB per job; the export and the result stay
    return {"result": result, "wall_s": wall, "sequence_starts": starts}


def ours_prepare(args, folder: Path, warmup_corpus: Path) -> None:
    env = ours_env(folder)
    subprocess.run([str(args.app_python), "manage.py", "migrate", "-v0"], cwd=args.app_repo, env=env, check=True)
    # Untimed: the first job on the model's name converts the bundled GGUF into the app's cache.
    done = subprocess.run([str(args.app_python), "manage.py", "train", "--model", args.ours_model, "--corpus", str(warmup_corpus),
                    "--no-progress", "--layer-number", str(args.layer), "--architecture", "topk", "--k", "4",
                    "--hidden-dim", "64", "--max-epochs", "1", "--max-sequence-length", "32"],
                   cwd=args.app_repo, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the warm-up job failed:\n{done.stderr[-6000:]}")


def ours_summary(run: dict) -> dict:
    """The numbers ours reports about itself (the result document's names)."""
    r = run["result"]
    evaluation, stats = r["evaluation"], r["training_stats"]
    return {"training_tokens": stats["training_tokens"], "ev": evaluation.get("explained_variance"),
            "l0": evaluation.get("l0"), "ce_loss_recovered": evaluation.get("ce_loss_recovered"),
            "kl_div_score": evaluation.get("kl_div_score"), "dead": evaluation.get("dead_features"),
            "ce_loss_clean": evaluation.get("ce_loss_clean"), "ce_loss_with_sae": evaluation.get("ce_loss_with_sae"),
            "extraction_s": stats.get("extraction", {}).get("seconds"), "training_s": stats.get("training_time_seconds")}


# --- SAELens: a whole process of this script in the bench venv -------------------------------

def saelens_run(args, folder: Path, model_folder: Path, train_lines: list[str], heldout_lines: list[str],
                architecture: str, tokens: int) -> dict:
    spec = {"model_folder": str(model_folder), "architecture": architecture, "tokens": tokens,
            "out": str(folder / f"saelens_{architecture}"), "train_lines": train_lines,
            "heldout_lines": heldout_lines, "args": {k: v for k, v in vars(args).items() if k in WORKER_ARGS}}
    spec_file = folder / f"saelens_{architecture}.json"
    spec_file.write_text(json.dumps(spec), encoding="utf-8")
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(BENCH / "smollm2.py"), "--saelens-worker", str(spec_file)],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"SAELens ({architecture}) failed:\n{done.stderr[-3000:]}")
    return {"result": json.loads(done.stdout.strip().splitlines()[-1]), "wall_s": wall, "folder": spec["out"]}


WORKER_ARGS = ("layer", "hook_point", "d_sae", "k", "batch", "lr", "context", "lm_batch", "sparsity_coeff")


def saelens_worker(spec_file: Path) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(2)
    if torch.get_num_interop_threads() != 1:
        torch.set_num_interop_threads(1)
    from datasets import Dataset
    from sae_lens import (JumpReLUTrainingSAEConfig, LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner,
                          LoggingConfig, TopKTrainingSAEConfig)
    from sae_lens.evals import EvalConfig, run_evals
    from sae_lens.training.activations_store import ActivationsStore

    spec = json.loads(spec_file.read_text(encoding="utf-8"))
    a = argparse.Namespace(**spec["args"])
    d_in, tokens = 576, spec["tokens"]
    steps = tokens // a.batch
    common = dict(d_in=d_in, d_sae=a.d_sae, dtype="float32", device="cpu", normalize_activations="expected_average_only_in")
    if spec["architecture"] == "topk":
        sae_cfg = TopKTrainingSAEConfig(k=a.k, **common)
    else:
        sae_cfg = JumpReLUTrainingSAEConfig(l0_coefficient=2000 * a.sparsity_coeff, jumprelu_init_threshold=0.1,
                                            jumprelu_bandwidth=0.05, l0_warm_up_steps=round(0.05 * steps), **common)
    cfg = LanguageModelSAERunnerConfig(
        sae=sae_cfg, model_name=spec["model_folder"], model_class_name="AutoModelForCausalLM",
        hook_name=hf_module_name(a.hook_point, a.layer), dataset_path="", is_dataset_tokenized=False, streaming=False,
        context_size=a.context, prepend_bos=True, exclude_special_tokens=True,
        training_tokens=tokens, train_batch_size_tokens=a.batch, store_batch_size_prompts=a.lm_batch,
        # its mixing buffer holds n_batches_in_buffer x context_size activations: 65,536 as ours'
        # shuffle buffer (TrainConfig.shuffle_buffer_tokens)
        n_batches_in_buffer=max(2 * a.batch, OURS_SHUFFLE_BUFFER_TOKENS) // a.context,
        lr=a.lr, lr_scheduler_name="constant", lr_warm_up_steps=round(0.01 * steps), lr_decay_steps=round(0.2 * steps),
        n_batches_for_norm_estimate=max(1, 8192 // a.batch), device="cpu", seed=0,
        logger=LoggingConfig(log_to_wandb=False), n_checkpoints=0, checkpoint_path=None, output_path=None, verbose=False,
    )
    runner = LanguageModelSAETrainingRunner(cfg, override_dataset=Dataset.from_dict({"text": spec["train_lines"]}))
    started = time.monotonic()
    sae = runner.run()
    training_s = time.monotonic() - started

    # SAELens' own evaluation, on the held-out lines, as many tokens as ours evaluates.
    eval_tokens = min(APP_CE_MAX_TOKENS, round(APP_HELDOUT_FRACTION * tokens / (1 - APP_HELDOUT_FRACTION)))
    store = ActivationsStore.from_config(runner.model, cfg, override_dataset=Dataset.from_dict({"text": spec["heldout_lines"]}))
    prompts = min(a.lm_batch, math.ceil(eval_tokens / a.context))
    batches = max(1, math.ceil(eval_tokens / (prompts * a.context)))
    started = time.monotonic()
    nested, _ = run_evals(sae, store, runner.model, _identity_scaler(),
                          EvalConfig(batch_size_prompts=prompts, n_eval_reconstruction_batches=batches,
                                     n_eval_sparsity_variance_batches=batches, compute_ce_loss=True, compute_kl=True,
                                     compute_variance_metrics=True, compute_sparsity_metrics=True),
                          exclude_special_tokens=True)
    metrics = {f"{group}/{name}": value for group, values in nested.items() if isinstance(values, dict)
               for name, value in values.items()}
    eval_s = time.monotonic() - started
    runner.save_final_sae(sae, spec["out"])
    keep = ("model_behavior_preservation/kl_div_score", "model_performance_preservation/ce_loss_score",
            "model_performance_preservation/ce_loss_with_sae", "model_performance_preservation/ce_loss_without_sae",
            "sparsity/l0", "reconstruction_quality/explained_variance")
    print(json.dumps({"training_s": training_s, "eval_s": eval_s, "tokens": tokens,
                      "eval_tokens": prompts * batches * a.context,
                      "metrics": {k: float(v) for k, v in metrics.items() if k in keep}}))


def _identity_scaler():
    from sae_lens.training.activation_scaler import ActivationScaler

    return ActivationScaler()  # the scaling is folded into the weights after training
