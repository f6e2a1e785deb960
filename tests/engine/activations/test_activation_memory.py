"""Activations larger than the RAM budget stream from their cache: the process's peak resident
memory stays near the budget, where loading them would take their whole size."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]
ROWS, D_MODEL = 160_000, 1024  # 312 MiB of float16

SCRIPT = """
import sys, numpy as np, torch
from engine.trainer import TrainConfig, train_sae
def rss_mib(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
acts = np.load(sys.argv[1], mmap_mode='r')
budget = None if sys.argv[2] == 'none' else int(sys.argv[2])
before = rss_mib('VmRSS:')
train_sae(acts, TrainConfig(min_steps=0, cpu_bf16="off", hidden_dim=32, max_epochs=1, min_loss=0, sae_batch_tokens=1024, ram_budget_bytes=budget,
                            eval_fraction=0.001, checkpoint_every_epochs=0, checkpoint_interval_s=1e9))
print(rss_mib('VmHWM:') - before)
"""


@pytest.fixture(scope="module")
def big_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache") / "activations.npy"
    rows = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(ROWS, D_MODEL))
    rng = np.random.default_rng(0)
    for start in range(0, ROWS, 20_000):
        rows[start:start + 20_000] = rng.standard_normal((20_000, D_MODEL), dtype=np.float32)
    rows.flush()
    del rows
    return path


def peak_growth_mib(path, budget):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(path), budget], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return float(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_cache_over_the_budget_streams_and_resident_memory_stays_near_the_budget(big_cache):
    size_mib = big_cache.stat().st_size / 2**20
    loaded = peak_growth_mib(big_cache, "none")
    streamed = peak_growth_mib(big_cache, str(32 * 2**20))
    print(f"cache {size_mib:.0f} MiB: peak growth {loaded:.0f} MiB loaded, {streamed:.0f} MiB streamed")
    assert loaded > 0.9 * size_mib  # the whole cache in RAM
    # Streaming keeps only batches: the budget plus the SAE's working memory and torch's own.
    assert streamed < loaded - 0.8 * size_mib
    assert streamed < 32 + 200


def test_a_slice_of_a_memory_mapped_cache_reads_its_own_rows(tmp_path):
    import torch

    from engine.activations.source import ActivationSource, read_rows

    path = tmp_path / "rows.npy"
    np.save(path, np.arange(400, dtype=np.float16).reshape(100, 4))
    mapped = np.load(path, mmap_mode="r")
    part = mapped[40:60]
    assert read_rows(part, np.array([0, 1, 19])).tolist() == mapped[[40, 41, 59]].tolist()
    streamed = ActivationSource(part, 20, ram_budget_bytes=1, device="cpu")  # over budget: pread from the file
    assert streamed.mode == "stream"
    assert streamed.read(torch.tensor([0, 5])).tolist() == mapped[[40, 45]].astype(np.float32).tolist()
    streamed.close()
