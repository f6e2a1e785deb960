"""A whole run that needs its activations once: they stream from the model to the SAE, no cache
file is written, and evaluation, statistics and the feature analysis still work; a streamed run
killed and resumed trains on the same tokens; a run that cannot fit the disk is refused."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.disk import DiskFull
from engine.evaluation.features import load_analysis
from engine.run import RunCallbacks, RunPaths, RunSpec, run
from engine.trainer import TrainConfig

PHASES = ["loading", "training", "evaluating", "analyzing"]


def config(**overrides) -> TrainConfig:
    values = dict(min_steps=0, cpu_bf16="off", architecture="topk", k=4, hidden_dim=32, learning_rate=1e-3, sae_batch_tokens=64, max_epochs=1,
                  min_loss=0.0, checkpoint_every_epochs=1, checkpoint_interval_s=1e9, progress_interval_s=0.0,
                  stop_check_interval_s=0.0, shuffle_buffer_tokens=128, decode_path="dense")
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture
def corpus(tmp_path, sample_texts):
    path = tmp_path / "docs.jsonl"
    documents = [" ".join(sample_texts[i : i + 4]) for i in range(0, len(sample_texts), 4)] * 3
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    return path


def spec(folder, model_dir, corpus, **overrides) -> RunSpec:
    values = dict(cpu_bf16="off", paths=RunPaths.in_folder(folder), model=str(model_dir), corpus=corpus, layer_number=1,
                  max_sequence_length=16, batch_size=8, config=config())
    values.update(overrides)
    return RunSpec(**values)


@pytest.mark.slow
def test_a_one_pass_run_streams_and_writes_no_cache(tmp_path, tiny_gpt2_dir, corpus):
    phases = []
    outcome = run(spec(tmp_path / "out", tiny_gpt2_dir, corpus),
                  RunCallbacks(on_phase=lambda phase, **details: phases.append(phase)))
    assert outcome.status == "completed" and phases == PHASES
    paths = outcome.paths
    assert outcome.activations_path is None and not paths.activations.exists()
    stats = outcome.training_stats
    assert stats["activations_cached"] is False and "once" in stats["cache_decision"]
    assert stats["tokens_trained"] == stats["training_tokens"] == outcome.result.heldout_rows[0]
    assert outcome.evaluation["ce_loss_reason"] is None and outcome.evaluation["explained_variance"] is not None
    assert stats["feature_statistics"]["total_features"] == 32
    # The analysis ran the model over the rows again (all of them: fewer than its cap), with their
    # tokens for the contexts, and left no file of them behind.
    assert outcome.features["contexts"] is True and outcome.features["analyzed_tokens"] == stats["tokens"]
    analysis = load_analysis(paths.features_dir)
    fired = analysis.top_rows >= 0
    assert fired.any() and (analysis.window_tokens[fired][:, analysis.window] >= 0).all()
    assert sorted(p.name for p in paths.features_dir.parent.iterdir() if "activations" in p.name) == []
    assert json.loads(paths.metadata.read_text())["activations_path"] is None


@pytest.mark.slow
def test_a_budget_trains_on_that_many_tokens_and_reads_only_what_it_needs(tmp_path, tiny_gpt2_dir, corpus):
    full = run(spec(tmp_path / "full", tiny_gpt2_dir, corpus))
    budget = run(spec(tmp_path / "budget", tiny_gpt2_dir, corpus, training_tokens=100, config=config(max_epochs=5)))
    stats = budget.training_stats
    assert stats["tokens_trained"] == 100 and stats["stopped_reason"] == "training_tokens"
    assert stats["tokens"] < full.training_stats["tokens"] and stats["activations_cached"] is False


@pytest.mark.slow
def test_always_caches_a_one_pass_run(tmp_path, tiny_gpt2_dir, corpus):
    outcome = run(spec(tmp_path / "out", tiny_gpt2_dir, corpus, cache_activations="always"))
    assert outcome.activations_path == outcome.paths.activations and outcome.training_stats["activations_cached"]


@pytest.mark.slow
def test_never_streams_every_epoch_of_a_run_of_several(tmp_path, tiny_gpt2_dir, corpus):
    outcome = run(spec(tmp_path / "out", tiny_gpt2_dir, corpus, cache_activations="never", config=config(max_epochs=3)))
    assert outcome.result.total_epochs == 3 and outcome.activations_path is None
    assert outcome.training_stats["passes"] == 3.0


@pytest.mark.slow
def test_a_run_whose_cache_cannot_fit_the_disk_is_refused_before_it_writes(tmp_path, tiny_gpt2_dir, corpus, monkeypatch):
    monkeypatch.setattr("engine.run.sources.free_bytes", lambda folder: 50_000)
    with pytest.raises(DiskFull, match="needs .* of disk .* Set cache_activations to auto or never"):
        run(spec(tmp_path / "out", tiny_gpt2_dir, corpus, cache_activations="always", config=config(max_epochs=2)))
    assert not (tmp_path / "out" / "sae_activations.npy").exists()


_KILLED_RUN = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.engine.run.test_run_streaming import config, spec
from engine.run import RunCallbacks, run
run(spec(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), cache_activations="never", config=config(max_epochs=3)),
    RunCallbacks(on_checkpoint=lambda info: os.kill(os.getpid(), signal.SIGKILL)))
"""


@pytest.mark.slow
def test_a_streamed_run_killed_and_resumed_trains_on_the_same_tokens(tmp_path, tiny_gpt2_dir, corpus):
    whole = run(spec(tmp_path / "whole", tiny_gpt2_dir, corpus, cache_activations="never", config=config(max_epochs=3)))
    # A process that dies (SIGKILL, no chance to clean up) right after its first checkpoint.
    root = str(Path(__file__).resolve().parents[3])
    killed = subprocess.run([sys.executable, "-c", _KILLED_RUN.format(root=root), str(tmp_path / "killed"),
                             str(tiny_gpt2_dir), str(corpus)], cwd=root, env={**os.environ, "PYTHONPATH": root})
    assert killed.returncode == -signal.SIGKILL
    checkpoint = tmp_path / "killed" / "sae_checkpoint_1.pt"
    resumed = run(spec(tmp_path / "killed", tiny_gpt2_dir, corpus, cache_activations="never",
                       config=config(max_epochs=3), resume_from=checkpoint))
    assert resumed.result.tokens_trained == whole.result.tokens_trained
    assert resumed.result.loss_history == pytest.approx(whole.result.loss_history, rel=1e-6)
    for name, value in whole.result.sae.state_dict().items():
        torch.testing.assert_close(resumed.result.sae.state_dict()[name], value, rtol=0, atol=1e-6)


_KILLED_MID_PASS = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.engine.run.test_run_streaming import config, spec
from engine.run import RunCallbacks, run
kill_at = int(sys.argv[4])
run(spec(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), config=config(checkpoint_interval_s=0.0)),
    RunCallbacks(on_train_progress=lambda p: p.step >= kill_at and os.kill(os.getpid(), signal.SIGKILL)))
"""


@pytest.mark.slow
def test_a_one_pass_streamed_run_killed_mid_pass_resumes_from_its_latest_checkpoint(tmp_path, tiny_gpt2_dir, corpus):
    whole = run(spec(tmp_path / "whole", tiny_gpt2_dir, corpus))
    assert whole.training_stats["activations_cached"] is False
    total_steps = -(-whole.result.tokens_trained // whole.result.sae_batch_tokens)
    # One pass, so no epoch's end before the last step: the checkpoints it has are checkpoint_interval_s's.
    root = str(Path(__file__).resolve().parents[3])
    killed = subprocess.run([sys.executable, "-c", _KILLED_MID_PASS.format(root=root), str(tmp_path / "killed"),
                             str(tiny_gpt2_dir), str(corpus), str(total_steps * 3 // 4)], cwd=root,
                            env={**os.environ, "PYTHONPATH": root})
    assert killed.returncode == -signal.SIGKILL
    kept = sorted((tmp_path / "killed").glob("sae_checkpoint_*"))
    assert len(kept) == 1 and kept[0].name.startswith("sae_checkpoint_0_step_")
    steps = []
    resumed = run(spec(tmp_path / "killed", tiny_gpt2_dir, corpus, resume_from=kept[0]),
                  RunCallbacks(on_train_progress=lambda p: steps.append(p.step)))
    # It took up where the checkpoint was, well into the pass, not at its first step.
    assert steps[0] - 1 >= total_steps // 2
    assert resumed.status == "completed" and resumed.result.tokens_trained == whole.result.tokens_trained
    for name, value in whole.result.sae.state_dict().items():
        torch.testing.assert_close(resumed.result.sae.state_dict()[name], value, rtol=0, atol=1e-6)


_KILLED_WRITING = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.engine.run.test_run_streaming import config, spec
from engine.run import run
from engine.trainer import checkpoint
save, written = checkpoint.torch.save, []

def save_then_die(payload, path):  # dies half-way through its third checkpoint
    written.append(path)
    if len(written) < 3:
        return save(payload, path)
    Path(path).write_bytes(b"half a checkpoint")
    os.kill(os.getpid(), signal.SIGKILL)

checkpoint.torch.save = save_then_die
run(spec(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), config=config(checkpoint_interval_s=0.0)))
"""


@pytest.mark.slow
def test_a_streamed_run_killed_while_writing_a_checkpoint_resumes_from_the_one_before(tmp_path, tiny_gpt2_dir, corpus):
    whole = run(spec(tmp_path / "whole", tiny_gpt2_dir, corpus))
    root = str(Path(__file__).resolve().parents[3])
    killed = subprocess.run([sys.executable, "-c", _KILLED_WRITING.format(root=root), str(tmp_path / "killed"),
                             str(tiny_gpt2_dir), str(corpus)], cwd=root, env={**os.environ, "PYTHONPATH": root})
    assert killed.returncode == -signal.SIGKILL
    (partial,) = (tmp_path / "killed").glob("sae_checkpoint_*.pt.partial")
    (kept,) = (tmp_path / "killed").glob("sae_checkpoint_*.pt")
    assert kept.name.startswith("sae_checkpoint_0_step_")
    steps = []
    resumed = run(spec(tmp_path / "killed", tiny_gpt2_dir, corpus, resume_from=kept),
                  RunCallbacks(on_train_progress=lambda p: steps.append(p.step)))
    assert steps[0] > 1 and not partial.exists()
    assert resumed.status == "completed" and resumed.result.tokens_trained == whole.result.tokens_trained
    for name, value in whole.result.sae.state_dict().items():
        torch.testing.assert_close(resumed.result.sae.state_dict()[name], value, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_a_cached_run_resumed_without_its_cache_extracts_again_rather_than_stream(tmp_path, tiny_gpt2_dir, corpus):
    # Cancelled inside its one epoch, from a cache; the cache is gone by the resume, whose plan alone
    # (one pass, auto) would stream: the checkpoint's batches came from a cache, so it caches again.
    steps = []
    first = run(spec(tmp_path / "out", tiny_gpt2_dir, corpus, cache_activations="always"),
                RunCallbacks(on_train_progress=steps.append, should_stop=lambda: len(steps) >= 3))
    assert first.cancelled_in == "training"
    first.paths.activations.unlink()
    checkpoint = first.result.checkpoints[-1].path
    resumed = run(spec(tmp_path / "out", tiny_gpt2_dir, corpus, resume_from=checkpoint))
    assert resumed.status == "completed" and resumed.training_stats["activations_cached"] is True
