"""Checkpoints carry a format_version that resuming reads; those written before it (format 1) still
resume as they would have. The files in data/format1 were written by miStudio at commit 516ec10
(before format_version), with the loss history its uninterrupted runs ended with (expected.json):
relu, topk (k 4) and jumprelu SAEs of width 32 on 1000 rows of width 16, 4 epochs, at the end of
epoch 2 and cancelled after 13 steps (mid-epoch)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import EngineError
from engine.trainer import TrainConfig, train_sae
from engine.trainer.checkpoint import FORMAT_VERSION

FORMAT1 = Path(__file__).parent / "data" / "format1"
EXPECTED = json.loads((FORMAT1 / "expected.json").read_text())
OPTIONS = {"relu": {}, "topk": {"k": 4}, "jumprelu": {}}


def data():
    return np.random.default_rng(1).normal(size=(1000, 16)).astype(np.float32)


def config(architecture) -> TrainConfig:
    return TrainConfig(min_steps=0, cpu_bf16="off", hidden_dim=32, learning_rate=1e-3, sae_batch_tokens=128, max_epochs=4, min_loss=0.0,
                       checkpoint_every_epochs=2, checkpoint_interval_s=1e9, progress_interval_s=0.0,
                       stop_check_interval_s=0.0, architecture=architecture, decode_path="dense",
                       **OPTIONS[architecture])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["checkpoint_2", "cancelled_checkpoint_1"])
@pytest.mark.parametrize("architecture", list(OPTIONS))
def test_a_checkpoint_written_before_format_versions_resumes_as_it_would_have(architecture, name):
    path = FORMAT1 / f"{architecture}_{name}.pt"
    assert "format_version" not in torch.load(path, weights_only=True)
    resumed = train_sae(data(), config(architecture), resume_from=path)
    assert resumed.total_epochs == 4
    # Bit for bit what the version that wrote it ended with, uninterrupted.
    assert resumed.loss_history == EXPECTED[architecture]["loss_history"]
    sums = {k: float(v.double().sum()) for k, v in resumed.sae.state_dict().items()}
    # Bit for bit on the CPU that wrote them (an AMD EPYC); another's kernels (an Intel Xeon's) round
    # jumprelu's threshold sums differently in the ninth digit. A resume that went wrong (its step,
    # rates, rng or moments) also changes the loss history, compared exactly above.
    assert sums == pytest.approx(EXPECTED[architecture]["state_dict_sums"], rel=1e-7)


def test_this_version_writes_its_format_and_refuses_a_newer_one(tmp_path):
    result = train_sae(data(), config("topk"), checkpoint_dir=tmp_path)
    path = result.checkpoints[0].path
    saved = torch.load(path, weights_only=True)
    assert saved["format_version"] == FORMAT_VERSION
    assert set(saved["epoch_sums"]) == {"loss", "mse", "sparsity", "tokens"}
    saved["format_version"] = FORMAT_VERSION + 1
    torch.save(saved, path)
    with pytest.raises(EngineError, match=f"format {FORMAT_VERSION + 1}, newer"):
        train_sae(data(), config("topk"), resume_from=path)
