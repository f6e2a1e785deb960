"""bench/sweep.py's three sides, each a whole process: the members as separate `manage.py train`
jobs one after another (A), one `manage.py train --sweep FILE` (B), SAELens'
MultiSAETrainingRunner in the bench venv (C, `sweep.py --saelens-worker SPEC`), and what each
side's result says of its members."""
import json
import math
import os
import secrets
import subprocess
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
D_MODEL = 576  # SmolLM2-135M


def member_name(layer: int, settings: dict) -> str:
    return f"L{layer}-{settings['architecture']}-k{settings['k']}"


# --- ours: the app's manage.py, each side in its own data folder --------------------------------

def app_env(args, folder: Path) -> dict:
    """The same MISTUDIO settings for every process of both sides; only the folders differ.
    MIN_SAE_STEPS 0: one pass, no floor of 1,000 steps repeating epochs (as bench/smollm2.py).
    TOPK_DECODE: the app's "auto" by default (it times dense against sparse on each job's first
    batch; the two decode alike up to rounding); --topk-decode dense pins it."""
    return {**os.environ, "MISTUDIO_SECRET_KEY": args.secret_key, "MISTUDIO_DATA_DIR": str(folder / "data"),
            "DATABASE_URL": f"sqlite:///{folder / 'db.sqlite3'}", "MISTUDIO_MODELS_CACHE_DIR": str(args.models_cache),
            "MISTUDIO_MIN_SAE_STEPS": "0", "MISTUDIO_TOPK_DECODE": args.topk_decode, "OMP_NUM_THREADS": "2"}


def new_secret_key() -> str:
    return secrets.token_urlsafe(50)


def app_prepare(args, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(args.app_python), "manage.py", "migrate", "-v0"], cwd=args.app_repo, env=app_env(args, folder),
                   check=True)


def base_fields(args, corpus_file: Path) -> dict:
    """The seed's training fields every member shares (the sweep's base, each job's options)."""
    return {"model_name": args.model, "corpus_file": str(corpus_file), "batch_size": args.lm_batch,
            "max_sequence_length": args.context, "training_tokens": args.tokens, "max_epochs": 1, "min_loss": 0.0,
            "sae_batch_tokens": args.batch, "learning_rate": args.lr, "hidden_dim": args.d_sae}


def job_options(fields: dict, layer: int, settings: dict) -> list[str]:
    names = {"batch_size": "--batch-size", "max_sequence_length": "--max-sequence-length",
             "training_tokens": "--training-tokens", "max_epochs": "--max-epochs", "min_loss": "--min-loss",
             "sae_batch_tokens": "--sae-batch-tokens", "learning_rate": "--learning-rate", "hidden_dim": "--hidden-dim",
             "architecture": "--architecture", "k": "--k"}
    values = {**fields, **settings}
    options = ["--model", values["model_name"], "--corpus", values["corpus_file"], "--layer-number", str(layer)]
    for field, option in names.items():
        options += [option, str(values[field])]
    return options


def last_document(stdout: str) -> dict:
    """The JSON document the command prints last (indented: its first line is a lone '{')."""
    start = stdout.rindex("\n{") + 1 if "\n{" in stdout else stdout.index("{")
    return json.loads(stdout[start:])


def run_app(args, folder: Path, options: list[str], label: str) -> dict:
    command = [str(args.app_python), "manage.py", "train", "--no-progress", *options]
    load = os.getloadavg()[0]
    started = time.monotonic()
    done = subprocess.run(command, cwd=args.app_repo, env=app_env(args, folder), capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode != 0 and "{" not in done.stdout:
        raise SystemExit(f"{label}: manage.py train failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    print(f"  {label}: {wall:.0f} s, exit {done.returncode}, load average {load:.2f} -> {os.getloadavg()[0]:.2f}",
          flush=True)
    return {"document": last_document(done.stdout), "wall_s": wall, "returncode": done.returncode,
            "load_before": load, "stderr_tail": done.stderr[-2000:] if done.returncode else ""}


def warm_up(args, folder: Path, corpus_file: Path) -> None:
    """Untimed: the first job on the model's name converts the bundled GGUF into the shared
    MISTUDIO_MODELS_CACHE_DIR (both sides then load the converted folder), and pages the model in."""
    app_prepare(args, folder)
    fields = {**base_fields(args, corpus_file), "training_tokens": 2000, "hidden_dim": 64}
    run_app(args, folder, job_options(fields, args.layers[0], {"architecture": "topk", "k": 4}), "warm-up job (untimed)")


def separate_jobs(args, folder: Path, corpus_file: Path, members: list[tuple[int, dict]]) -> dict:
    """Side A: one whole `manage.py train` process per member, one after another, as a user's
    queued jobs run on one worker."""
    app_prepare(args, folder)
    fields = base_fields(args, corpus_file)
    runs, started = [], time.monotonic()
    for layer, settings in members:
        run = run_app(args, folder, job_options(fields, layer, settings), f"separate {member_name(layer, settings)}")
        run["layer"], run["settings"] = layer, settings
        run["sequences"] = extracted_sequences(run["document"])
        runs.append(run)
    return {"runs": runs, "wall_s": time.monotonic() - started}


def sweep_job(args, folder: Path, corpus_file: Path, members: list[tuple[int, dict]]) -> dict:
    """Side B: the same members as one `manage.py train --sweep FILE` process."""
    app_prepare(args, folder)
    layers = list(dict.fromkeys(layer for layer, _ in members))
    settings = list({json.dumps(s, sort_keys=True): s for _, s in members}.values())
    body = {**base_fields(args, corpus_file), "architecture": settings[0]["architecture"], "k": settings[0]["k"],
            "layers": layers, "hook_points": ["resid_post"], "members": settings}
    sweep_file = folder / "sweep.json"
    sweep_file.write_text(json.dumps(body, indent=2), encoding="utf-8")
    run = run_app(args, folder, ["--sweep", str(sweep_file)], f"sweep of {len(layers) * len(settings)} members")
    run["body"] = body
    return run


def extracted_sequences(document: dict) -> int | None:
    """Sequences the job ran through the model: its extraction's count, or (a streamed job reports
    none) the length of the sequence_starts file it leaves beside its metadata."""
    extraction = (document.get("training_stats") or {}).get("extraction") or {}
    if extraction.get("sequences") is not None:
        return int(extraction["sequences"])
    metadata = document.get("metadata_path")
    if not metadata:
        return None
    starts = Path(metadata).with_name(f"{document['job_id']}_activations_sequence_starts.npy")
    if not starts.is_file():
        return None
    import numpy as np

    return int(np.load(starts).shape[0])


def forward_batches(sequences: int | None, batch_size: int) -> int | None:
    """A job's model forwards over its corpus: one per batch of batch_size sequences."""
    return None if sequences is None else math.ceil(sequences / batch_size)


# --- SAELens: MultiSAETrainingRunner, a whole process in the bench venv ------------------------

def saelens_side(args, folder: Path, model_folder: Path, train_lines: list[str], members: list[tuple[int, dict]]) -> dict:
    spec = {"model_folder": str(model_folder), "out": str(folder / "saes"), "train_lines": train_lines,
            "members": [{"name": member_name(layer, s), "layer": layer, **s} for layer, s in members],
            "tokens": args.tokens, "d_sae": args.d_sae, "batch": args.batch, "lr": args.lr, "context": args.context,
            "lm_batch": args.lm_batch}
    folder.mkdir(parents=True, exist_ok=True)
    spec_file = folder / "spec.json"
    spec_file.write_text(json.dumps(spec), encoding="utf-8")
    load = os.getloadavg()[0]
    started = time.monotonic()
    done = subprocess.run([str(args.bench_python), str(BENCH / "sweep.py"), "--saelens-worker", str(spec_file)],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"SAELens MultiSAETrainingRunner failed:\n{done.stderr[-4000:]}")
    print(f"  SAELens MultiSAETrainingRunner, {len(members)} SAEs: {wall:.0f} s, load average {load:.2f} -> "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    return {"result": json.loads(done.stdout.strip().splitlines()[-1]), "wall_s": wall, "load_before": load,
            "folders": {m["name"]: str(Path(spec["out"]) / m["name"]) for m in spec["members"]}}


def saelens_worker(spec_file: Path) -> None:
    """In the bench venv: the members as one MultiSAETrainingRunner (one HF forward per batch for
    every hook, each SAE its own optimizer and scaler), saved in SAELens' format."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(2)
    if torch.get_num_interop_threads() != 1:
        torch.set_num_interop_threads(1)
    from datasets import Dataset
    from sae_lens import BatchTopKTrainingSAEConfig, LoggingConfig, TopKTrainingSAEConfig
    from sae_lens.multi_sae_training_runner import MultiSAETrainingRunner, MultiSAETrainingRunnerConfig

    spec = json.loads(spec_file.read_text(encoding="utf-8"))
    configs = {"topk": TopKTrainingSAEConfig, "batchtopk": BatchTopKTrainingSAEConfig}
    saes = {m["name"]: configs[m["architecture"]](k=m["k"], d_in=D_MODEL, d_sae=spec["d_sae"], dtype="float32",
                                                  device="cpu", normalize_activations="expected_average_only_in")
            for m in spec["members"]}
    tokens, batch, context = spec["tokens"], spec["batch"], spec["context"]
    steps = tokens // batch
    cfg = MultiSAETrainingRunnerConfig(
        saes=saes, hook_names={m["name"]: f"model.layers.{m['layer']}" for m in spec["members"]},
        model_name=spec["model_folder"], model_class_name="AutoModelForCausalLM", dataset_path="", streaming=False,
        context_size=context, prepend_bos=True, exclude_special_tokens=True, training_tokens=tokens,
        train_batch_size_tokens=batch, store_batch_size_prompts=spec["lm_batch"],
        # Its mixing buffer, in contexts: ours' shuffle buffer (65,536 rows) or the whole budget
        # when smaller, since it fills the buffer before its first step.
        n_batches_in_buffer=max(2, min(65536, tokens) // context),
        lr=spec["lr"], lr_scheduler_name="constant", lr_warm_up_steps=round(0.01 * steps),
        lr_decay_steps=round(0.2 * steps), n_batches_for_norm_estimate=max(1, 8192 // batch), device="cpu", seed=0,
        logger=LoggingConfig(log_to_wandb=False), n_checkpoints=0, checkpoint_path=None, output_path=spec["out"])
    runner = MultiSAETrainingRunner(cfg, override_dataset=Dataset.from_dict({"text": spec["train_lines"]}))
    started = time.monotonic()
    runner.run()
    print(json.dumps({"training_s": time.monotonic() - started, "tokens": tokens, "steps": steps,
                      "sae_lens": __import__("sae_lens").__version__}))
