"""Ours alone, end to end, the two ways the service can run a fresh job, alternated in one process
so a change of load on the machine hits both alike:

- overlapped: train_sae stepping on an ExtractionStream's rows as they arrive
  (MISTUDIO_OVERLAP_EXTRACTION=on, the default);
- sequential: extract_activations, then train_sae on the finished file (=off).

Same model, texts and SAE as vs_saelens.py (a random Llama-shaped LM, 600 sequences of 128 tokens,
layer 4, TopK d_sae 2048, k 32, batch 512 tokens, one pass, bf16 on a CPU with AMX). Prints the
median and best seconds of each and the explained variance on held-out rows.

    .venv-bench/bin/python bench/overlap.py [--pairs 8] [--buffer 16384]
"""
import argparse
import math
import statistics
import tempfile
from pathlib import Path

import _setup

_setup.set_threads()

import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.activations.extract import ExtractionStream, extract_activations  # noqa: E402
from engine.activations.cache import load_activations  # noqa: E402
from engine.devices import cpu_has_fast_bf16  # noqa: E402
from engine.models.loading import load_model  # noqa: E402
from engine.models.resolve import resolve_model  # noqa: E402
from engine.trainer import TrainConfig, train_sae  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--buffer", type=int, default=16384, help="shuffle_buffer_tokens")
    parser.add_argument("--texts", type=int, default=600)
    args = parser.parse_args()
    bf16 = "on" if cpu_has_fast_bf16() else "off"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        loaded = load_model(resolve_model(str(_setup.build_model(tmp / "m")), models_dir=None), device="cpu", cpu_bf16=bf16)
        texts, _ = _setup.exact_chunks(loaded.tokenizer, args.texts + 100, tokens=128)
        extract = dict(layer_number=4, batch_size=32, max_sequence_length=128)
        heldout = torch.from_numpy(np.asarray(load_activations(
            extract_activations(loaded, texts[args.texts:], out_path=tmp / "h.npy", **extract).path), dtype=np.float32))
        config = TrainConfig(min_steps=0, architecture="topk", k=32, hidden_dim=2048, learning_rate=1e-3, sae_batch_tokens=512,
                             max_epochs=1, min_loss=0, eval_fraction=0, checkpoint_every_epochs=0,
                             checkpoint_interval_s=math.inf, progress_interval_s=math.inf, cpu_bf16=bf16,
                             shuffle_buffer_tokens=args.buffer)

        def sequential():
            extraction = extract_activations(loaded, texts[: args.texts], out_path=tmp / "s.npy", **extract)
            return train_sae(load_activations(extraction.path), config)

        def overlapped():
            stream = ExtractionStream(loaded, texts[: args.texts], out_path=tmp / "o.npy", **extract)
            try:
                result = train_sae(stream, config)
                stream.result()
                return result
            finally:
                stream.close()

        def ev(result):
            s, sae = result.scaling_factor, result.sae
            with torch.no_grad():
                recon = sae.decode(sae.encode(heldout * s)) / s
            return 1 - ((heldout - recon) ** 2).sum().item() / ((heldout - heldout.mean(0)) ** 2).sum().item()

        overlapped()  # warm-up
        times, quality = {"overlapped": [], "sequential": []}, {}
        for pair in range(args.pairs):
            runs = [("overlapped", overlapped), ("sequential", sequential)]
            for name, run in runs if pair % 2 == 0 else runs[::-1]:
                started = time.perf_counter()
                result = run()
                times[name].append(time.perf_counter() - started)
                quality[name] = ev(result)
    print(f"machine: {_setup.machine()}; {args.texts * 128} tokens, bf16 {bf16}, buffer {args.buffer}, {args.pairs} pairs")
    for name, values in times.items():
        print(f"{name:11s} median {statistics.median(values):5.2f} s  best {min(values):5.2f} s  EV {quality[name]:.3f}"
              f"  ({' '.join(f'{v:.2f}' for v in values)})")
    ratio = statistics.median(times["sequential"]) / statistics.median(times["overlapped"])
    print(f"overlapped is {ratio:.2f}x the speed of sequential (medians)")


if __name__ == "__main__":
    main()
