"""The GPU check, sized for one call of the device tool (about 5 minutes on one H100):

1. the bf16 matmul ceiling of this card;
2. a plain PyTorch SAE step and ours at d_in 4096, d_sae 65536, batch 4096 (relu and topk), as
   tokens/s and fraction of the ceiling;
3. end-to-end first-epoch tokens/s on a randomly initialised Llama-shaped 1B model at layer 8,
   training while extracting (the service's way on a GPU) and extracting then training, against
   the ideal 1 / (1/extraction + 1/sae_step) measured in the same run;
4. a 4-bit load of that model (bitsandbytes);
5. correctness: the bf16 run's loss within 2% of an fp32 run;
6. the one-pass streamed run of issue 25 (engine.run, cache_activations "never"): that 1B model in
   bf16 on a JSONL corpus, concat packing, an fp32 TopK SAE; tokens/s of the whole run and of its
   training phase, seconds of every phase, the share of wall time in the SAE step, peak GPU memory
   and the evaluation's figures (the next-token metrics in bounded logits memory).

    python bench/gpu.py            # on the GPU machine
    python bench/gpu.py --small    # a few seconds on a CPU: checks that the script runs
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.sae import build_sae  # noqa: E402
from engine.sae import get as architecture_of  # noqa: E402
from engine.trainer import TrainConfig, train_sae  # noqa: E402
from engine.trainer.checkpoint import RunState  # noqa: E402
from engine.trainer.step import Run  # noqa: E402


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device, repeats):
    fn()
    sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - started) / repeats


def matmul_ceiling(device, n, repeats):
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, device, repeats)
    return 2 * n**3 / seconds


def sae_step_flops(d_in, d_sae, batch):
    # forward encode + decode, backward twice that: 3 x (2 matmuls of 2*B*d_in*d_sae)
    return 3 * 2 * (2 * batch * d_in * d_sae)


def plain_step(d_in, d_sae, batch, device):
    """The floor to beat: a textbook ReLU SAE step in bf16 autocast with stock Adam."""
    W_enc = torch.nn.Parameter(torch.randn(d_in, d_sae, device=device) * 0.01)
    W_dec = torch.nn.Parameter(torch.randn(d_sae, d_in, device=device) * 0.01)
    b_enc = torch.nn.Parameter(torch.zeros(d_sae, device=device))
    b_dec = torch.nn.Parameter(torch.zeros(d_in, device=device))
    optimizer = torch.optim.Adam([W_enc, W_dec, b_enc, b_dec], lr=1e-4)
    x = torch.randn(batch, d_in, device=device)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            f = torch.relu((x - b_dec) @ W_enc + b_enc)
            recon = f @ W_dec + b_dec
            loss = (recon.float() - x).pow(2).mean() + 1e-3 * f.float().abs().sum(-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def our_step(architecture, d_in, d_sae, batch, device, k=64):
    kind = architecture_of(architecture)
    takes_k = "k" in {field.name for field in kind.request_fields}
    config = TrainConfig(min_steps=0, cpu_bf16="off", architecture=architecture, k=k if takes_k else None, hidden_dim=d_sae)
    sae = build_sae(architecture, d_in, d_sae, k=config.k).to(device)
    optimizer = torch.optim.Adam(kind.param_groups(sae, config, 1000), lr=1e-4,
                                 fused=True if device.startswith("cuda") else None)
    state = RunState()
    state.tokens_since_fired = torch.zeros(d_sae, dtype=torch.int64, device=device)
    run = Run(config=config, sae=sae, optimizer=optimizer, state=state, device=device, total_steps=1000,
              dead_window_tokens=10**9, batch_tokens=batch)
    x = torch.randn(batch, d_in, device=device)
    return (lambda: run.step(x)), run


def build_llama(folder, small):
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    if small:
        config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                             num_key_value_heads=4, vocab_size=1000)
    else:  # Llama-3.2-1B's shape
        config = LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                             num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=True)
    with torch.device("cpu"):
        LlamaForCausalLM(config).save_pretrained(folder)
    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(config.vocab_size)}, unk_token="w0"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="w0", pad_token="w0", eos_token="w1").save_pretrained(folder)
    return config


def end_to_end(device, small, layer):
    from engine.activations.extract import ExtractionStream, extract_activations
    from engine.models.loading import load_model
    from engine.models.resolve import resolve_model

    rng = np.random.default_rng(0)
    n_seq, seq_len = (64, 32) if small else (2048, 256)
    texts = [" ".join(f"w{i}" for i in rng.integers(2, 999, size=seq_len)) for _ in range(n_seq)]
    with tempfile.TemporaryDirectory() as folder:
        config = build_llama(folder, small)
        layer = min(layer, config.num_hidden_layers - 1)
        loaded = load_model(resolve_model(folder, models_dir=None), device=device)
        out = Path(folder) / "acts.npy"
        extract = dict(layer_number=layer, batch_size=16 if not small else 8, max_sequence_length=seq_len)
        extraction = extract_activations(loaded, texts, out_path=out, **extract)
        acts = np.load(out, mmap_mode="r")
        d_sae = 4 * config.hidden_size if small else 16 * config.hidden_size
        train_config = TrainConfig(min_steps=0, cpu_bf16="off", architecture="topk", k=32, hidden_dim=d_sae, max_epochs=1, min_loss=0,
                                   sae_batch_tokens=4096, eval_fraction=0.01, shuffle_buffer_tokens=65536)
        started = time.perf_counter()
        result = train_sae(acts, train_config, device=device)
        train_s = time.perf_counter() - started
        sae_rate = acts.shape[0] * 0.99 / train_s
        ideal = 1 / (1 / extraction.tokens_per_s + 1 / sae_rate)
        sequential = acts.shape[0] / (extraction.seconds + train_s)
        # What the service does on a GPU: train while extracting (MISTUDIO_OVERLAP_EXTRACTION=auto).
        started = time.perf_counter()
        stream = ExtractionStream(loaded, texts, out_path=Path(folder) / "acts2.npy", **extract)
        try:
            result = train_sae(stream, train_config, device=device)
            stream.result()
        finally:
            stream.close()
        actual = (acts.shape[0] / (time.perf_counter() - started), sequential)
        quantized = None
        if device.startswith("cuda"):
            started = time.perf_counter()
            q = load_model(resolve_model(folder, models_dir=None), device=device, quantization="4bit")
            quantized = (time.perf_counter() - started, torch.cuda.memory_allocated() / 2**30)
            del q
        return extraction, sae_rate, ideal, actual, result.decode_path, quantized


def bf16_matches_fp32(device, small):
    rng = np.random.default_rng(1)
    d = 64 if small else 1024
    acts = rng.standard_normal((4096 if small else 65536, d)).astype(np.float32)
    config = TrainConfig(min_steps=0, cpu_bf16="off", architecture="relu", hidden_dim=4 * d, max_epochs=2, min_loss=0, sae_batch_tokens=1024,
                         learning_rate=3e-4)
    bf16 = train_sae(acts, config, device=device).final_loss
    if device.startswith("cuda"):
        # The same run with autocast off: fp32 throughout (TF32 off too).
        torch.backends.cuda.matmul.allow_tf32 = False
        original = Run._forward

        def fp32_forward(self, x, y, path):
            self.autocast = False  # what _forward reads: no bf16 autocast for this run
            try:
                return original(self, x, y, path)
            finally:
                self.autocast = True

        Run._forward = fp32_forward
        fp32 = train_sae(acts, config, device=device).final_loss
        Run._forward = original
    else:
        fp32 = bf16
    return bf16, fp32


def streamed_run(device, small, layer):
    """Section 6: (the phase seconds, the run's wall, the SAE step's seconds, peak GPU bytes, the outcome)."""
    import json

    from engine.run import RunCallbacks, RunPaths, RunSpec, run
    from engine.trainer.step import Run as StepRun

    rng = np.random.default_rng(2)
    tokens = 20_000 if small else 4_000_000
    with tempfile.TemporaryDirectory() as folder:
        config = build_llama(folder, small)
        corpus = Path(folder) / "docs.jsonl"
        with open(corpus, "w") as out:  # documents of 1,000 words: 1.2x the tokens asked
            for _ in range(int(tokens * 1.2 / 1000) + 1):
                out.write(json.dumps({"text": " ".join(f"w{i}" for i in rng.integers(2, 999, size=1000))}) + "\n")
        spec = RunSpec(cpu_bf16="off", paths=RunPaths.in_folder(Path(folder) / "run"), model=folder, corpus=corpus,
                       layer_number=min(layer, config.num_hidden_layers - 1), max_sequence_length=256 if not small else 64,
                       batch_size=32 if not small else 8, training_tokens=tokens, cache_activations="never", device=device,
                       config=TrainConfig(min_steps=0, cpu_bf16="off", architecture="topk", k=32, hidden_dim=16 * config.hidden_size, max_epochs=1,
                                          sae_batch_tokens=4096, min_loss=0))
        phases, step_s = {}, [0.0]
        original = StepRun.step

        def timed_step(self, x, target=None):
            sync(device)
            started = time.perf_counter()
            out = original(self, x, target)
            sync(device)
            step_s[0] += time.perf_counter() - started
            return out

        def on_phase(phase, **_):
            phases[phase] = time.perf_counter()

        StepRun.step = timed_step
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        try:
            outcome = run(spec, RunCallbacks(on_phase=on_phase))
        finally:
            StepRun.step = original
        wall = time.perf_counter() - started
        names = list(phases)
        ends = [phases[n] for n in names[1:]] + [started + wall]
        seconds = {name: ends[i] - phases[name] for i, name in enumerate(names)}
        peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
        return seconds, wall, step_s[0], peak, outcome


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", action="store_true", help="tiny sizes, to check the script on a CPU")
    args = parser.parse_args()
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    small = args.small or not device.startswith("cuda")
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU"
    print(f"device {device} ({name}), torch {torch.__version__}, small={small}")

    ceiling = matmul_ceiling(device, 1024 if small else 8192, 3 if small else 20)
    print(f"1. matmul ceiling: {ceiling / 1e12:.1f} TFLOP/s ({'fp32' if small else 'bf16'})")

    d_in, d_sae, batch = (128, 1024, 512) if small else (4096, 65536, 4096)
    flops = sae_step_flops(d_in, d_sae, batch)
    repeats = 3 if small else 20
    plain_s = timed(plain_step(d_in, d_sae, batch, device), device, repeats)
    print(f"2. SAE step d_in {d_in} d_sae {d_sae} batch {batch}")
    print(f"   plain relu  {batch / plain_s:10.0f} tokens/s  {flops / plain_s / ceiling:6.1%} of ceiling")
    for architecture in ("relu", "topk"):
        step, run = our_step(architecture, d_in, d_sae, batch, device)
        ours_s = timed(step, device, repeats)
        print(f"   ours {architecture:6s} {batch / ours_s:10.0f} tokens/s  {flops / ours_s / ceiling:6.1%} of ceiling"
              f"  ({batch / ours_s / (batch / plain_s):.2f}x plain; decode {run.state.decode_path})")

    extraction, sae_rate, ideal, actual, decode_path, quantized = end_to_end(device, small, layer=8)
    print(f"3. end to end, layer 8: extraction {extraction.tokens_per_s:.0f} tokens/s "
          f"({extraction.real_token_share:.1%} real tokens), SAE {sae_rate:.0f} tokens/s (decode {decode_path})")
    overlapped, sequential = actual
    print(f"   first epoch, training while extracting {overlapped:.0f} tokens/s; extracting then training {sequential:.0f};"
          f" ideal 1/(1/extraction + 1/sae) = {ideal:.0f}: {overlapped / ideal:.1%} (sequential {sequential / ideal:.1%})")
    if quantized:
        print(f"4. 4-bit load: {quantized[0]:.1f} s, {quantized[1]:.2f} GiB allocated")
    else:
        print("4. 4-bit load: skipped (needs CUDA)")

    bf16, fp32 = bf16_matches_fp32(device, small)
    print(f"5. final loss bf16 {bf16:.5f} vs fp32 {fp32:.5f}: {abs(bf16 - fp32) / fp32:.2%} apart "
          f"({'OK' if abs(bf16 - fp32) <= 0.02 * fp32 else 'MORE THAN 2%'})")

    seconds, wall, step_s, peak, outcome = streamed_run(device, small, layer=8)
    trained = outcome.training_stats["tokens_trained"]
    evaluation = outcome.evaluation
    print(f"6. one-pass streamed run, {trained:,} tokens: {trained / wall:.0f} tokens/s whole run, "
          f"{trained / seconds['training']:.0f} in training; SAE step {step_s / wall:.1%} of wall; peak GPU memory "
          f"{'n/a' if peak is None else f'{peak / 2**30:.2f} GiB'}")
    print("   " + "  ".join(f"{name} {s:.1f} s" for name, s in seconds.items()))
    print(f"   EV {evaluation['explained_variance']:.4f}, L0 {evaluation['l0']:.1f}, CE recovered "
          f"{evaluation['ce_loss_recovered']}, over {evaluation['eval_tokens']:,} held-out rows and "
          f"{evaluation.get('ce_eval_tokens')} predictions; analysed {outcome.features['analyzed_tokens']:,} tokens")


if __name__ == "__main__":
    main()
