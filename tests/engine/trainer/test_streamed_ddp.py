"""A streamed run over two processes (engine.trainer.streamed with distributed=True): each rank
computes the rows from the model itself and steps on its share of every batch, so the two together
train the SAE one process trains on the same stream, and only rank 0 writes checkpoints."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engine.distributed import exit_rank, load_result, save_result
from engine.models.loading import load_model
from engine.models.resolve import resolve_model
from engine.defaults import eval_rows
from engine.trainer import train_sae
from tests.engine.activations.test_streaming import config, corpus, stream_of  # noqa: F401 (fixture)

WORLD = 2


def even_stream(corpus_path, loaded):
    """A stream whose training rows are even in number, so every batch (an epoch's last too)
    splits evenly between the two ranks, as it must for them to train what one process does
    (a cached run's ranks cut an odd last batch the same way)."""
    for n_rows in range(1200, 1400):
        stream = stream_of(Path(corpus_path), loaded, n_rows=n_rows)
        if (stream.n_rows - eval_rows(stream.n_rows, config().eval_fraction)) % WORLD == 0:
            return stream
    raise AssertionError("no stream of 1200-1400 rows has an even training share")


def _rank(rank, rendezvous, model_dir, corpus_path, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD)
    try:
        loaded = load_model(resolve_model(model_dir, models_dir=None), device="cpu")
        stream = even_stream(corpus_path, loaded)
        result = train_sae(stream, config(max_epochs=2), checkpoint_dir=Path(out_dir) / f"rank{rank}",
                                distributed=True)
        save_result(result, Path(out_dir) / f"rank{rank}.pt")
        (Path(out_dir) / f"rank{rank}.forwards").write_text(str(stream.forward_batches))
    finally:
        dist.destroy_process_group()
    exit_rank()  # CI saw a finished gloo rank abort in the interpreter's teardown (SIGABRT)


@pytest.mark.slow
def test_two_processes_stream_and_train_the_sae_one_process_trains(corpus, tiny_gpt2_dir, tmp_path):
    loaded = load_model(resolve_model(str(tiny_gpt2_dir), models_dir=None), device="cpu")
    stream = even_stream(corpus, loaded)
    single = train_sae(stream, config(max_epochs=2))
    mp.spawn(_rank, args=(str(tmp_path / "rendezvous"), str(tiny_gpt2_dir), str(corpus), str(tmp_path)),
             nprocs=WORLD, join=True)
    rank0, rank1 = (load_result(tmp_path / f"rank{r}.pt") for r in range(WORLD))
    assert rank0.streamed and rank0.total_epochs == 2 and rank0.tokens_trained == single.tokens_trained
    np.testing.assert_allclose(rank0.loss_history, single.loss_history, rtol=1e-4)
    for name, value in single.sae.state_dict().items():
        torch.testing.assert_close(rank0.sae.state_dict()[name], value, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(rank1.sae.state_dict()[name], rank0.sae.state_dict()[name], rtol=0, atol=0)
    assert rank0.scaling_factor == pytest.approx(single.scaling_factor, rel=1e-12)
    # Each rank ran the model over the whole pass, as the one process did; rank 0 alone checkpointed.
    assert [int((tmp_path / f"rank{r}.forwards").read_text()) for r in range(WORLD)] == [stream.forward_batches] * 2
    assert rank0.checkpoints and not rank1.checkpoints
    assert not list((tmp_path / "rank1").glob("*.pt"))
