"""The same TopK SAE trained by miStudio's engine and by SAELens, in one run:

(a) end to end, from the same Hugging Face causal LM (a random Llama-shaped LM saved to a folder,
    see _setup.py) and the same texts: ours = what the service does, train_sae stepping on the rows
    of an ExtractionStream as they arrive (--sequential: extract_activations, then train_sae, as
    with MISTUDIO_OVERLAP_EXTRACTION=off), SAELens =
    LanguageModelSAETrainingRunner with model_class_name="AutoModelForCausalLM" (its HookedProxyLM);
(b) from the same pre-computed activations (one float32 tensor): ours = train_sae, SAELens =
    SAETrainer fed by an in-memory iterator over shuffled batches of that tensor.

Same d_in, d_sae, k, batch size in tokens, learning rate (1% warm-up, linear decay to 0 over the
last 20%), tokens, and torch threads. End to end, both draw the first (here the only) pass through a shuffle
buffer of the same size: SAELens' n_batches_in_buffer x store_batch_size_prompts x context, ours
shuffle_buffer_tokens (--sequential: ours shuffles all rows). Model loading is outside every timing. Explained variance and
L0 are computed by one function, on both SAEs' encode/decode, on the same held-out activations
(other texts, extracted by our engine).

--precision sets both sides alike: fp32 (the default of both libraries before MISTUDIO_CPU_BF16)
or bf16 (ours: bf16 weights and SAE matmuls under bf16 autocast, cpu_bf16="on"; SAELens: its
autocast_lm and autocast options, bf16 autocast of the LM forward and of the SAE step). The
held-out activations are always a float32 extraction.

Run in the bench venv, from the repository root:
    .venv-bench/bin/python bench/vs_saelens.py [--precision bf16] [--train-texts 600] [--repeats 3] [--profile]
"""

import argparse
import math
import os
import statistics
import tempfile
import warnings
from pathlib import Path

import numpy as np

import _setup

_setup.set_threads()

import torch  # noqa: E402

from engine.activations.extract import ExtractionStream, extract_activations  # noqa: E402
from engine.activations.cache import load_activations  # noqa: E402
from engine.models.loading import load_model  # noqa: E402
from engine.models.resolve import resolve_model  # noqa: E402
from engine.trainer import TrainConfig, train_sae  # noqa: E402

CONTEXT = 128


@torch.no_grad()
def explained_variance_and_l0(encode, decode, x: torch.Tensor) -> tuple[float, float]:
    """encode/decode take and give raw activations' space: each library's own convention hidden."""
    f = encode(x)
    x_hat = decode(f)
    residual = ((x - x_hat) ** 2).sum().item()
    total = ((x - x.mean(dim=0)) ** 2).sum().item()
    return 1.0 - residual / total, (f > 0).float().sum(dim=1).mean().item()


def timed(name, fn, profile: bool):
    torch.manual_seed(0)  # both libraries start from the same global RNG state
    return _setup.timed(name, fn, profile)


def our_config(args) -> TrainConfig:
    return TrainConfig(
        min_steps=0, shuffle_buffer_tokens=args.buffer_batches * args.lm_batch * CONTEXT,
        architecture="topk", k=args.k, hidden_dim=args.d_sae, learning_rate=args.lr, sae_batch_tokens=args.batch,
        max_epochs=1, min_loss=0, eval_fraction=0, checkpoint_every_epochs=0, checkpoint_interval_s=math.inf,
        progress_interval_s=math.inf, cpu_bf16="on" if args.precision == "bf16" else "off",
    )


def saelens_sae_config(args, d_in: int):
    from sae_lens import TopKTrainingSAEConfig

    # SAELens' own TopK recipe otherwise (its AuxK, decoder-norm rescaling, init); the input scaling
    # is the same as ours: mean norm sqrt(d_in), estimated on about 8k tokens as ours is.
    return TopKTrainingSAEConfig(d_in=d_in, d_sae=args.d_sae, k=args.k, dtype="float32", device="cpu",
                                 normalize_activations="expected_average_only_in")


def schedule(args, n_tokens: int) -> dict:
    steps = n_tokens // args.batch
    return dict(lr=args.lr, lr_scheduler_name="constant", lr_warm_up_steps=round(0.01 * steps),
                lr_decay_steps=round(0.2 * steps), n_batches_for_norm_estimate=max(1, 8192 // args.batch))


def saelens_end_to_end(args, folder: Path, token_ids: list[list[int]], n_tokens: int, layer: int, d_in: int):
    """Returns (SAELens SAE, a function that trains it): the runner loads the LM outside the timing."""
    from datasets import Dataset
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig

    cfg = LanguageModelSAERunnerConfig(
        sae=saelens_sae_config(args, d_in),
        model_name=str(folder), model_class_name="AutoModelForCausalLM", hook_name=f"model.layers.{layer}",
        dataset_path="", is_dataset_tokenized=True, streaming=False, context_size=CONTEXT,
        prepend_bos=False, sequence_separator_token=None, exclude_special_tokens=False,
        training_tokens=n_tokens, train_batch_size_tokens=args.batch,
        store_batch_size_prompts=args.lm_batch, n_batches_in_buffer=args.buffer_batches,
        device="cpu", seed=0, logger=LoggingConfig(log_to_wandb=False), n_checkpoints=0, checkpoint_path=None,
        autocast=args.precision == "bf16", autocast_lm=args.precision == "bf16",
        output_path=None, verbose=False, **schedule(args, n_tokens),
    )
    runner = LanguageModelSAETrainingRunner(cfg, override_dataset=Dataset.from_dict({"input_ids": token_ids}))
    return runner.run


def saelens_from_activations(args, acts: torch.Tensor):
    from sae_lens import TopKTrainingSAE
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    n = acts.shape[0] // args.batch * args.batch
    sched = schedule(args, n)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=n, train_batch_size_samples=args.batch, lr=sched["lr"], lr_end=sched["lr"],
        lr_scheduler_name="constant", lr_warm_up_steps=sched["lr_warm_up_steps"], lr_decay_steps=sched["lr_decay_steps"],
        device="cpu", n_batches_for_norm_estimate=sched["n_batches_for_norm_estimate"],
        autocast=args.precision == "bf16",
    )

    def batches():
        generator = torch.Generator().manual_seed(0)
        while True:  # the norm estimate draws a few batches first, as from a LM buffer
            order = torch.randperm(acts.shape[0], generator=generator)
            for start in range(0, n, args.batch):
                yield acts[order[start : start + args.batch]]

    def train():
        torch.manual_seed(0)
        sae = TopKTrainingSAE(saelens_sae_config(args, acts.shape[1]))
        return SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=batches()).fit()

    return train, n


def main():
    # One experiment, read top to bottom: its steps share the temporary folder and the timed closures
    # (a script's main, not library code; over 60 lines on purpose).
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-texts", type=int, default=600, help="sequences of 128 tokens")
    parser.add_argument("--heldout-texts", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--d-sae", type=int, default=2048)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=512, help="SAE batch, tokens")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lm-batch", type=int, default=32, help="sequences per LM forward, both libraries")
    parser.add_argument("--buffer-batches", type=int, default=4, help="SAELens n_batches_in_buffer")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="both libraries alike")
    parser.add_argument("--skip-end-to-end", action="store_true")
    parser.add_argument("--sequential", action="store_true",
                        help="ours end to end: extract everything, then train (MISTUDIO_OVERLAP_EXTRACTION=off)")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import sae_lens

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = _setup.build_model(tmp / "model", hidden_size=args.hidden)
        resolved = resolve_model(str(folder), models_dir=None)
        loaded = load_model(resolved, device="cpu", cpu_bf16="on" if args.precision == "bf16" else "off")
        reference = loaded if args.precision == "fp32" else load_model(resolved, device="cpu")
        layer = loaded.config.num_hidden_layers // 2
        d_in = loaded.config.hidden_size
        texts, ids = _setup.exact_chunks(loaded.tokenizer, args.train_texts + args.heldout_texts, tokens=CONTEXT)
        train_texts, heldout_texts = texts[: args.train_texts], texts[args.train_texts :]
        train_ids = ids[: args.train_texts]

        extract = dict(layer_number=layer, batch_size=args.lm_batch, max_sequence_length=CONTEXT)
        heldout = torch.from_numpy(np.asarray(load_activations(
            extract_activations(reference, heldout_texts, out_path=tmp / "heldout.npy", **extract).path), dtype=np.float32))
        extract_activations(loaded, train_texts[:32], out_path=tmp / "warm.npy", **extract)  # warm-up

        rows: dict[str, list] = {}  # name -> [tokens trained, [seconds per repeat], EV, L0]

        def record(name, tokens, seconds, quality):
            row = rows.setdefault(name, [tokens, [], None, None])
            row[1].append(seconds)
            row[2], row[3] = quality

        def ours_eval(result):
            s, sae = result.scaling_factor, result.sae
            return explained_variance_and_l0(lambda x: sae.encode(x * s), lambda f: sae.decode(f) / s, heldout)

        def theirs_eval(sae):
            sae.eval()
            return explained_variance_and_l0(sae.encode, sae.decode, heldout)

        def ours_end_to_end():
            path = tmp / "train.npy"
            if args.sequential:
                extraction = extract_activations(loaded, train_texts, out_path=path, **extract)
                return extraction, train_sae(load_activations(extraction.path), our_config(args))
            stream = ExtractionStream(loaded, train_texts, out_path=path, **extract)
            try:
                result = train_sae(stream, our_config(args))
                return stream.result(), result
            finally:
                stream.close()

        # The two libraries alternate, so a load change on the machine hits both alike.
        for repeat in range(args.repeats):
            # (a) end to end. Ours first: its extracted rows are (b)'s shared tensor.
            (extraction, result), seconds = timed("ours end to end", ours_end_to_end, args.profile and repeat == 0)
            n_tokens = extraction.n_tokens
            how = "then" if args.sequential else "beside"
            print(f"repeat {repeat + 1}: ours end to end {seconds:.1f} s: extraction {extraction.seconds:.1f} s,"
                  f" training {result.training_time_seconds:.1f} s {how} it", flush=True)
            if not args.skip_end_to_end:
                record("(a) end to end, ours", n_tokens, seconds, ours_eval(result))
                n_saelens = n_tokens // args.batch * args.batch
                run = saelens_end_to_end(args, folder, train_ids, n_saelens, layer, d_in)  # loads the LM: untimed
                sae, seconds = timed("SAELens end to end", run, args.profile and repeat == 0)
                print(f"repeat {repeat + 1}: SAELens end to end {seconds:.1f} s", flush=True)
                record("(a) end to end, SAELens", n_saelens, seconds, theirs_eval(sae))

            # (b) from the same activations, already in memory as float32 for both.
            acts = torch.from_numpy(np.asarray(load_activations(extraction.path), dtype=np.float32))
            result, seconds = timed("ours from activations", lambda: train_sae(acts, our_config(args)),
                                    args.profile and repeat == 0)
            record("(b) from activations, ours", acts.shape[0], seconds, ours_eval(result))
            train, n = saelens_from_activations(args, acts)
            sae, seconds = timed("SAELens from activations", train, args.profile and repeat == 0)
            record("(b) from activations, SAELens", n, seconds, theirs_eval(sae))

    print(f"machine: {_setup.machine()}; torch threads now {torch.get_num_threads()}; load average {os.getloadavg()[0]:.2f}")
    print(f"precision {args.precision} on both sides; ours end to end {'sequential' if args.sequential else 'overlapped'}; sae-lens {sae_lens.__version__}; Llama hidden {d_in}, {loaded.config.num_hidden_layers} layers, layer {layer}; "
          f"TopK d_sae {args.d_sae}, k {args.k}, batch {args.batch} tokens, lr {args.lr:g}, 1 pass over "
          f"{n_tokens} tokens ({len(train_texts)} sequences of {CONTEXT} tokens); held out {heldout.shape[0]} tokens; "
          f"{args.repeats} repeats, tokens/s from the median time (best in brackets)")
    print(f"{'run':32s} {'tokens':>8s} {'median s':>8s} {'tokens/s':>9s} {'(best)':>8s} {'EV':>7s} {'L0':>6s}")
    speed = {}
    for name, (tokens, times, ev, l0) in rows.items():
        median, best = statistics.median(times), min(times)
        speed[name] = (tokens / median, tokens / best)
        print(f"{name:32s} {tokens:8d} {median:8.1f} {tokens / median:9.0f} {tokens / best:8.0f} {ev:7.3f} {l0:6.1f}")
    for part in ("(a) end to end", "(b) from activations"):
        if f"{part}, ours" in speed and f"{part}, SAELens" in speed:
            ours, theirs = speed[f"{part}, ours"], speed[f"{part}, SAELens"]
            print(f"{part}: ours / SAELens tokens/s = {ours[0] / theirs[0]:.2f}x (best vs best {ours[1] / theirs[1]:.2f}x)")

if __name__ == "__main__":
    main()
