"""miStudio's activation extraction against the usual way of getting one layer's activations: a
full forward with output_hidden_states=True over batches padded in corpus order, keeping the
real tokens of hidden_states[layer + 1].

Same model (a random Llama-shaped LM, see _setup.py), same texts, same layer, same batch size,
same torch threads; both write float16 rows. Prints tokens/s of both, the ratio, and the share of
real (non-padding) tokens in the batches each one ran.

Run in the bench venv, from the repository root:
    .venv-bench/bin/python bench/extraction.py [--texts 1000] [--repeats 2] [--layer 4] [--profile]
"""

import argparse
import os
import random
import tempfile
from pathlib import Path

import numpy as np

import _setup

_setup.set_threads()

import torch  # noqa: E402

from engine.activations.extract import GROUP_BATCHES, extract_activations  # noqa: E402
from engine.models.loading import load_model  # noqa: E402
from engine.models.resolve import resolve_model  # noqa: E402


def varied_texts(n_texts: int, seed: int = 0) -> list[str]:
    """1 to 12 corpus lines per text (about 15 to 250 tokens): lengths as uneven as real documents."""
    rng = random.Random(seed)
    lines = _setup.texts_of_lines(n_texts * 12, seed=seed)
    texts, i = [], 0
    while len(texts) < n_texts:
        n = rng.randint(1, 12)
        texts.append(" ".join(lines[i : i + n]))
        i += n
    return texts


def full_forward(loaded, texts, *, layer, batch_size, max_length, out):
    """Baseline: batches in corpus order, padded to their longest text, every block and the final
    norm run, hidden_states kept for every layer."""
    tokenizer, model = loaded.tokenizer, loaded.model
    row = padded = 0
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start : start + batch_size], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            outputs = model(**enc, output_hidden_states=True, use_cache=False)
            mask = enc["attention_mask"].bool()
            values = outputs.hidden_states[layer + 1][mask].numpy().astype(np.float16)
            out[row : row + len(values)] = values
            row += len(values)
            padded += mask.numel()
    return row, padded


def sorted_padding(loaded, texts, *, batch_size, max_length) -> int:
    """Tokens (real + padding) in the batches extract_activations runs: it sorts by length inside
    each group of GROUP_BATCHES batches."""
    every = [len(ids) for ids in loaded.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    group = batch_size * GROUP_BATCHES
    total = 0
    for first in range(0, len(every), group):
        lengths = sorted(every[first : first + group], reverse=True)
        total += sum(lengths[i] * len(lengths[i : i + batch_size]) for i in range(0, len(lengths), batch_size))
    return total


def main():
    # One experiment, read top to bottom: its steps share the temporary folder and the timed closures
    # (a script's main, not library code; over 60 lines on purpose).
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--layer", type=int, default=None, help="default: mid-depth, num_layers // 2")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--equal-lengths", action="store_true", help="texts of exactly 128 tokens each")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="cProfile both runs and print the top entries")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = _setup.build_model(tmp / "model", hidden_size=args.hidden)
        loaded = load_model(resolve_model(str(folder), models_dir=None), device="cpu")
        n_layers = loaded.config.num_hidden_layers
        layer = n_layers // 2 if args.layer is None else args.layer
        if args.equal_lengths:  # no padding to save: what is left is stopping early
            texts, _ = _setup.exact_chunks(loaded.tokenizer, args.texts, tokens=128)
        else:
            texts = varied_texts(args.texts)
        kwargs = dict(batch_size=args.batch_size, max_length=args.max_length)

        # Warm-up: first calls allocate and pick kernels.
        extract_activations(loaded, texts[:64], layer_number=layer, batch_size=args.batch_size,
                            max_sequence_length=args.max_length, out_path=tmp / "warm.npy")
        full_forward(loaded, texts[:64], layer=layer, out=np.empty((64 * args.max_length, loaded.config.hidden_size), np.float16), **kwargs)

        def ours():
            return extract_activations(loaded, texts, layer_number=layer, batch_size=args.batch_size,
                                       max_sequence_length=args.max_length, out_path=tmp / "ours.npy")

        n_tokens = sum(len(ids) for ids in loaded.tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"])
        baseline_rows = np.empty((n_tokens, loaded.config.hidden_size), np.float16)

        def baseline():
            return full_forward(loaded, texts, layer=layer, out=baseline_rows, **kwargs)

        # Alternating runs, so a load change on the machine hits both alike; the best time of each
        # is reported (interference only ever adds time).
        timings = {"baseline": [], "ours": []}
        for repeat in range(args.repeats):
            for name, fn in (("baseline", baseline), ("ours", ours)):
                result, seconds = _setup.timed(name, fn, args.profile and repeat == 0, top=12)
                timings[name].append(seconds)
                print(f"repeat {repeat + 1}: {name} {seconds:.1f} s", flush=True)
                if name == "baseline":
                    baseline_real, baseline_padded = result
        timings = {name: min(times) for name, times in timings.items()}

        ours_rows = np.load(tmp / "ours.npy", mmap_mode="r")
        assert ours_rows.shape[0] == baseline_real == n_tokens
        # Both store rows in corpus order: the same numbers up to float16 rounding and batch shape.
        max_diff = float(np.abs(ours_rows[:20000].astype(np.float32) - baseline_rows[:20000].astype(np.float32)).max())
        ours_padded = sorted_padding(loaded, texts, **kwargs)

    ours_tps, base_tps = n_tokens / timings["ours"], n_tokens / timings["baseline"]
    print(f"machine: {_setup.machine()}; load average {os.getloadavg()[0]:.2f}; best of {args.repeats} alternating runs")
    print(f"model: Llama, hidden {loaded.config.hidden_size}, {n_layers} layers; layer {layer} "
          f"({layer + 1} of {n_layers} blocks run by ours); {len(texts)} texts, {n_tokens} real tokens, "
          f"batch {args.batch_size}, max length {args.max_length}")
    print(f"full forward + output_hidden_states: {timings['baseline']:7.2f} s  {base_tps:9.0f} tokens/s  "
          f"real tokens {baseline_real / baseline_padded:.1%}")
    print(f"miStudio extract_activations:        {timings['ours']:7.2f} s  {ours_tps:9.0f} tokens/s  "
          f"real tokens {n_tokens / ours_padded:.1%}")
    print(f"ratio (ours / full forward): {ours_tps / base_tps:.2f}x   max |Δ| between the two: {max_diff:.3g}")


if __name__ == "__main__":
    main()
