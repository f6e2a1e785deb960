"""A Matryoshka BatchTopK SAE trained by two data-parallel processes (gloo on the CPU): its prefix
losses are computed beside DistributedDataParallel's forward, and every rank still ends with the
same weights, threshold and prefixes.

Spawned ranks import this module, so nothing here needs Django."""
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from engine.distributed import load_result
from tests.training.worker.test_ddp import WORLD, _rank

MATRYOSHKA = {"architecture": "matryoshka_batchtopk", "k": 4, "matryoshka_widths": [8, 32]}


@pytest.mark.slow
def test_two_processes_train_one_matryoshka_sae(tmp_path):
    mp.spawn(_rank, args=(str(tmp_path / "rendezvous"), str(tmp_path), {"matryoshka": (MATRYOSHKA, None)}),
             nprocs=WORLD, join=True)
    rank0, rank1 = (load_result(tmp_path / f"matryoshka_rank{r}.pt") for r in range(WORLD))
    assert rank0.sae.architecture == "matryoshka_batchtopk"
    assert rank0.sae.matryoshka_widths.tolist() == [8, 32, 64]
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "matryoshka_widths"):
        torch.testing.assert_close(rank1.sae.state_dict()[name], rank0.sae.state_dict()[name], rtol=0, atol=0)
    # DistributedDataParallel broadcasts rank 0's buffers before each forward, so the threshold is
    # rank 0's but for the last step's update, which each rank makes from its own shard (as for
    # batchtopk); the job keeps rank 0's.
    assert rank0.sae.threshold.item() > 0
    torch.testing.assert_close(rank1.sae.threshold, rank0.sae.threshold, rtol=0.01, atol=0)
    assert rank1.loss_history == rank0.loss_history and rank0.loss_history[-1] < rank0.loss_history[0]
    np.testing.assert_array_equal(rank1.tokens_since_fired, rank0.tokens_since_fired)
