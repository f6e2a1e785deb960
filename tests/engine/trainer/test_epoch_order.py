"""An epoch's order over a cache's rows is computed a batch at a time (engine.trainer.permutation),
not held as an array of every row: a permutation of the rows, decided by the generator's state, and
the same in every rank. Checkpoints written before it go on in torch.randperm's order."""
import numpy as np
import pytest
import torch

from engine.trainer import TrainConfig, train_sae
from engine.trainer.permutation import FEISTEL, RANDPERM, Permutation, epoch_order


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 950, 4097, 100_003])
def test_the_order_is_a_permutation_of_the_rows_read_in_any_runs(n):
    order = Permutation(n, torch.Generator().manual_seed(n))
    whole = order[0:n].numpy()
    assert np.array_equal(np.sort(whole), np.arange(n))
    cut = n // 3
    assert np.array_equal(np.concatenate([order[0:cut].numpy(), order[cut:n].numpy()]), whole)
    assert order[0:n].dtype == torch.int64


def test_the_generator_state_decides_the_order_and_each_epoch_gets_another():
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    first = Permutation(10_000, generator)[0:10_000]
    second = Permutation(10_000, generator)[0:10_000]  # the next epoch: the generator moved on
    generator.set_state(state)
    again = Permutation(10_000, generator)[0:10_000]
    assert torch.equal(first, again) and not torch.equal(first, second)
    # Shuffled, not a rotation or a stride: consecutive positions are unrelated rows.
    assert abs(np.corrcoef(first[:-1].numpy(), first[1:].numpy())[0, 1]) < 0.05
    assert abs(float(first[:1000].double().mean()) / 10_000 - 0.5) < 0.05


def test_an_order_over_a_trillion_rows_holds_no_array_of_them():
    order = Permutation(10**12, torch.Generator().manual_seed(0))
    batch = order[10**12 - 4096 : 10**12]
    assert len(batch) == 4096 and len(set(batch.tolist())) == 4096
    assert int(batch.min()) >= 0 and int(batch.max()) < 10**12


def test_checkpoints_name_their_order_and_older_ones_resume_with_randperm(tmp_path, monkeypatch):
    import engine.trainer.epochs as loop

    data = np.random.default_rng(1).normal(size=(1000, 16)).astype(np.float32)
    config = TrainConfig(min_steps=0, cpu_bf16="off", hidden_dim=32, architecture="topk", k=4, sae_batch_tokens=128, max_epochs=2, min_loss=0.0,
                         checkpoint_every_epochs=1, checkpoint_interval_s=1e9, decode_path="dense")
    drawn = []
    monkeypatch.setattr(loop, "epoch_order", lambda kind, n, generator: drawn.append(kind) or epoch_order(kind, n, generator))
    result = train_sae(data, config, checkpoint_dir=tmp_path / "run")
    assert drawn == [FEISTEL, FEISTEL]
    path = result.checkpoints[0].path  # epoch 1's end
    saved = torch.load(path, weights_only=True)
    assert saved["epoch_order"] == FEISTEL
    drawn.clear()
    train_sae(data, config, resume_from=path)
    assert drawn == [FEISTEL]
    del saved["epoch_order"]  # as every checkpoint written before it
    torch.save(saved, tmp_path / "older.pt")
    drawn.clear()
    resumed = train_sae(data, config, resume_from=tmp_path / "older.pt")
    assert drawn == [RANDPERM] and resumed.total_epochs == 2
    generator = torch.Generator().manual_seed(5)
    expected = torch.randperm(300, generator=generator)
    assert torch.equal(epoch_order(RANDPERM, 300, torch.Generator().manual_seed(5))[0:300], expected)
