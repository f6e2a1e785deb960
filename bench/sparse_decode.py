"""Dense matmul against sparse gather (embedding-bag) decoding for a TopK SAE step, forward and
backward, at one size. The trainer makes this choice itself on each job's first batch; this
script records the measurements behind it.

    .venv/bin/python bench/sparse_decode.py [--d-in 768] [--d-sae 24576] [--k 32] [--batch 2048] [--device cpu]
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.trainer import TrainConfig  # noqa: E402
from engine.trainer.checkpoint import RunState  # noqa: E402
from engine.trainer.step import Run  # noqa: E402
from engine.sae import build_sae  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--d-in", type=int, default=768)
    parser.add_argument("--d-sae", type=int, default=24576)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    sae = build_sae("topk", args.d_in, args.d_sae, k=args.k).to(args.device)
    config = TrainConfig(min_steps=0, cpu_bf16="off", architecture="topk", k=args.k, hidden_dim=args.d_sae)
    optimizer = torch.optim.Adam(sae.parameters())
    run = Run(config=config, sae=sae, optimizer=optimizer, state=RunState(), device=args.device, total_steps=1,
              dead_window_tokens=1, batch_tokens=args.batch)
    x = torch.randn(args.batch, args.d_in, device=args.device)
    results = {}
    for path in ("dense", "sparse"):
        for i in range(args.repeats + 1):
            if i == 1:
                started = time.perf_counter()
            _, _, recon, _, _ = run._forward(x, path)
            torch.nn.functional.mse_loss(recon, x).backward()
            optimizer.zero_grad(set_to_none=True)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        results[path] = (time.perf_counter() - started) / args.repeats
    print(f"d_in {args.d_in}, d_sae {args.d_sae}, k {args.k}, batch {args.batch}, {args.device}, "
          f"{torch.get_num_threads()} threads")
    for path, seconds in results.items():
        print(f"  {path:6s} {seconds * 1000:8.1f} ms/step  {args.batch / seconds:10.0f} tokens/s")
    print(f"  sparse/dense speed: {results['dense'] / results['sparse']:.2f}x")


if __name__ == "__main__":
    main()
