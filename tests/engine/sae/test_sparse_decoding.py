"""TopK's sparse decoder (a gather of k decoder rows) trains the same SAE as the dense matmul."""
import pytest
import torch

from engine.trainer import TrainConfig, train_sae
from tests.engine.trainer.test_sae_training import sparse_data


def train(path, data):
    return train_sae(data, TrainConfig(min_steps=0, cpu_bf16="off", architecture="topk", k=4, hidden_dim=128, max_epochs=3, min_loss=0,
                                       learning_rate=3e-3, sae_batch_tokens=256, decode_path=path))


def test_sparse_and_dense_decoding_train_the_same_sae():
    data = sparse_data(n_tokens=2048)
    dense, sparse = train("dense", data), train("sparse", data)
    assert (dense.decode_path, sparse.decode_path) == ("dense", "sparse")
    assert sparse.loss_history == pytest.approx(dense.loss_history, rel=1e-3)
    torch.testing.assert_close(sparse.sae.W_dec, dense.sae.W_dec, atol=1e-3, rtol=1e-3)


def test_auto_picks_a_path_by_timing_both():
    result = train("auto", sparse_data(n_tokens=1024))
    assert result.decode_path in ("dense", "sparse")
