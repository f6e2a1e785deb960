"""A whole run with no Django, as a notebook does it: `run(RunSpec(...))` on a tiny random model
over a corpus, or on a file of activations, and the outcome and files it leaves."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import EngineError, TrainingDiverged
from engine.run import RunCallbacks, RunPaths, RunSpec, TrainStep, run, train_in_process
from engine.trainer import TrainConfig

PHASES = ["loading", "extracting", "training", "evaluating", "analyzing"]


def config(**overrides) -> TrainConfig:
    values = dict(min_steps=0, cpu_bf16="off", architecture="topk", k=4, hidden_dim=32, learning_rate=1e-3, sae_batch_tokens=64, max_epochs=2,
                  min_loss=0.0, checkpoint_every_epochs=1, checkpoint_interval_s=1e9, progress_interval_s=0.0,
                  stop_check_interval_s=0.0, shuffle_buffer_tokens=128, decode_path="dense")
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture
def corpus(tmp_path, sample_texts):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(sample_texts * 2) + "\n")
    return path


def model_spec(folder, model_dir, corpus, **overrides) -> RunSpec:
    values = dict(cpu_bf16="off", paths=RunPaths.in_folder(folder), model=str(model_dir), corpus=corpus, layer_number=1,
                  max_sequence_length=16, batch_size=8, config=config())
    values.update(overrides)
    return RunSpec(**values)


class Recorder:
    """Callbacks that keep what the run said."""

    def __init__(self, stop_when=None):
        self.phases, self.progress, self.checkpoints, self.caches, self.errors = [], [], [], [], []
        self.stop_when = stop_when

    def callbacks(self) -> RunCallbacks:
        return RunCallbacks(
            on_phase=lambda phase, **details: self.phases.append((phase, details)),
            on_train_progress=self.progress.append, on_checkpoint=self.checkpoints.append,
            on_cache_complete=self.caches.append, on_error=lambda phase, err: self.errors.append((phase, err)),
            should_stop=lambda: bool(self.stop_when and self.stop_when(self)),
        )


@pytest.mark.slow
def test_a_run_trains_evaluates_exports_and_analyses_an_sae_on_a_causal_lm(tmp_path, tiny_gpt2_dir, corpus):
    said = Recorder()
    outcome = run(model_spec(tmp_path / "out", tiny_gpt2_dir, corpus), said.callbacks())

    assert outcome.status == "completed" and outcome.cancelled_in is None
    assert [phase for phase, _ in said.phases] == PHASES
    assert said.phases[2][1] == {"overlapped": False, "resume_from": None}
    result, paths = outcome.result, outcome.paths
    assert result.total_epochs == 2 and result.stopped_reason == "max_epochs"
    assert [c.epoch for c in said.checkpoints] == [1, 2] and said.progress

    activations = np.load(outcome.activations_path, mmap_mode="r")
    assert outcome.activations_path == paths.activations and activations.shape[1] == 32
    assert said.caches == [outcome.extraction] and outcome.extraction.n_tokens == activations.shape[0]
    stats = outcome.training_stats
    assert stats["tokens"] == activations.shape[0] and stats["extraction"]["overlapped_with_training"] is False
    assert stats["feature_statistics"]["total_features"] == 32
    evaluation = outcome.evaluation
    assert evaluation["ce_loss_reason"] is None and isinstance(evaluation["ce_loss_with_sae"], float)

    weights = torch.load(paths.model, weights_only=True)
    assert weights["W_enc"].shape == (32, 32)
    metadata = json.loads(paths.metadata.read_text())
    assert metadata == json.loads(json.dumps(outcome.metadata, default=str))
    assert metadata["model_info"]["is_causal_lm"] is True and metadata["corpus"] == "corpus.txt"
    assert metadata["layer_number"] == 1 and metadata["training"]["seed"] == 0
    cfg = json.loads((outcome.exports["saelens"] / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post" and cfg["metadata"]["context_size"] == 16
    assert cfg["metadata"]["prepend_bos"] is True and cfg["metadata"]["exclude_special_tokens"] is True
    assert (metadata["hook_point"], metadata["hook_name"], metadata["prepend_bos"], metadata["exclude_special_tokens"]) == (
        "resid_post", "blocks.1.hook_resid_post", True, True)
    assert outcome.features_dir == paths.features_dir
    assert outcome.features["contexts"] is True and outcome.features["logit_effect"] is True
    assert (paths.features_dir / "tokens.json").is_file()


@pytest.mark.slow
def test_a_run_at_another_hook_point_names_it_in_its_files_as_it_ran(tmp_path, minilm_dir, tiny_llama_dir, corpus):
    outcome = run(model_spec(tmp_path / "llama", tiny_llama_dir, corpus, hook_point="mlp_out", prepend_bos=False,
                             exclude_special_tokens=False))
    cfg = json.loads((outcome.exports["saelens"] / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_mlp_out"
    assert (cfg["metadata"]["prepend_bos"], cfg["metadata"]["exclude_special_tokens"]) == (False, False)
    assert (outcome.metadata["hook_point"], outcome.metadata["hook_name"]) == ("mlp_out", "blocks.1.hook_mlp_out")
    assert outcome.extraction.hook_point == "mlp_out" and outcome.evaluation["ce_loss_reason"] is None

    # An encoder's sequences get no BOS however prepend_bos is set: the effective value is recorded.
    encoder = run(model_spec(tmp_path / "bert", minilm_dir, corpus, hook_point="attn_out"))
    cfg = json.loads((encoder.exports["saelens"] / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_attn_out" and cfg["metadata"]["prepend_bos"] is False
    assert encoder.metadata["prepend_bos"] is False and encoder.metadata["exclude_special_tokens"] is True


@pytest.mark.slow
def test_a_run_whose_first_epoch_follows_the_extraction_order_trains_while_it_extracts(tmp_path, tiny_gpt2_dir, corpus):
    said = Recorder()
    outcome = run(model_spec(tmp_path / "out", tiny_gpt2_dir, corpus, first_epoch_in_arrival_order=True),
                  said.callbacks())
    assert outcome.status == "completed"
    assert said.phases[2] == ("training", {"overlapped": True, "resume_from": None})
    assert outcome.extraction.overlapped and said.caches == [outcome.extraction]
    assert outcome.training_stats["extraction"]["overlapped_with_training"] is True


@pytest.mark.slow
def test_a_cancelled_run_keeps_its_checkpoint_and_the_next_resumes_from_it_and_its_cache(tmp_path, tiny_gpt2_dir, corpus):
    said = Recorder(stop_when=lambda recorder: len(recorder.checkpoints) >= 1)
    spec = model_spec(tmp_path / "out", tiny_gpt2_dir, corpus, config=config(max_epochs=4))
    cancelled = run(spec, said.callbacks())
    assert cancelled.status == "cancelled" and cancelled.cancelled_in == "training"
    assert cancelled.result.stopped_reason == "cancelled" and cancelled.activations_path == spec.paths.activations
    checkpoint = said.checkpoints[-1].path
    assert checkpoint.is_file() and not spec.paths.model.exists()

    again = Recorder()
    spec.resume_from, spec.cache = checkpoint, cancelled.activations_path
    outcome = run(spec, again.callbacks())
    assert outcome.status == "completed" and outcome.result.total_epochs == 4
    # The cache is used as it is: nothing is extracted again.
    assert [phase for phase, _ in again.phases] == ["loading", "training", "evaluating", "analyzing"]
    assert again.phases[1][1]["resume_from"] == checkpoint
    assert outcome.extraction is None and "extraction" not in outcome.training_stats


@pytest.mark.slow
def test_a_run_on_an_activations_file_needs_no_model(tmp_path):
    path = tmp_path / "acts.npy"
    np.save(path, np.random.default_rng(0).normal(size=(800, 16)).astype(np.float32))
    said = Recorder()
    outcome = run(RunSpec(paths=RunPaths.in_folder(tmp_path / "out", "mine"), activations_file=path, config=config()),
                  said.callbacks())
    assert outcome.status == "completed"
    assert [phase for phase, _ in said.phases] == ["loading", "training", "evaluating", "analyzing"]
    assert outcome.activations_path == path and outcome.extraction is None
    assert "activations file" in outcome.evaluation["ce_loss_reason"] and outcome.evaluation["ce_loss_clean"] is None
    assert "activations file" in outcome.features["logit_effect_reason"]
    assert "activations file" in outcome.features["contexts_reason"]
    assert not (outcome.features_dir / "tokens.json").exists()
    metadata = json.loads((tmp_path / "out" / "mine_metadata.json").read_text())
    assert metadata["layer_number"] is None and metadata["model_name"] is None and metadata["activations_shape"] == [800, 16]
    assert metadata["hook_point"] is None and metadata["prepend_bos"] is None and metadata["exclude_special_tokens"] is None
    assert "activations file" in metadata["hook_point_reason"]
    assert (tmp_path / "out" / "mine_sae.pt").is_file() and (tmp_path / "out" / "mine_saelens" / "cfg.json").is_file()


@pytest.mark.slow
def test_a_run_trains_through_the_training_step_it_is_given(tmp_path):
    path = tmp_path / "acts.npy"
    np.save(path, np.random.default_rng(0).normal(size=(800, 16)).astype(np.float32))
    steps = []

    def train(step, activations, callbacks):
        steps.append(TrainStep.from_dict(json.loads(json.dumps(step.to_dict()))))  # as other processes get it
        return train_in_process(steps[-1], None, callbacks)

    outcome = run(RunSpec(paths=RunPaths.in_folder(tmp_path), activations_file=path, config=config()), train=train)
    assert outcome.status == "completed" and outcome.result.total_epochs == 2
    assert steps[0].activations_path == path and steps[0].config == config() and not steps[0].arrival_order


@pytest.mark.slow
def test_a_failed_run_names_its_phase(tmp_path):
    path = tmp_path / "acts.npy"
    np.save(path, np.random.default_rng(0).normal(size=(800, 16)).astype(np.float32))
    said = Recorder()
    spec = RunSpec(paths=RunPaths.in_folder(tmp_path), activations_file=path, config=config(learning_rate=1e12))
    with pytest.raises(TrainingDiverged):
        run(spec, said.callbacks())
    assert [phase for phase, _ in said.errors] == ["training"]


@pytest.mark.slow
def test_a_spec_takes_a_model_or_an_activations_file(tmp_path, corpus):
    with pytest.raises(EngineError, match="a model and a corpus, or an activations file"):
        run(RunSpec(paths=RunPaths.in_folder(tmp_path)))
    with pytest.raises(EngineError, match="a model and a corpus, or an activations file"):
        run(RunSpec(paths=RunPaths.in_folder(tmp_path), model="gpt2"))


def test_a_spec_never_shows_its_token(tmp_path):
    assert "hf_secret" not in repr(RunSpec(paths=RunPaths.in_folder(tmp_path), token="hf_secret"))


@pytest.mark.slow
def test_a_run_works_where_django_is_not_installed(tmp_path):
    np.save(tmp_path / "acts.npy", np.random.default_rng(0).normal(size=(400, 8)).astype(np.float32))
    code = (
        "import sys; sys.modules['django'] = None  # import django now fails, as where it is not installed\n"
        "from pathlib import Path\n"
        "from engine.run import RunPaths, RunSpec, run\n"
        "from engine.trainer import TrainConfig\n"
        f"folder = Path({str(tmp_path)!r})\n"
        "outcome = run(RunSpec(paths=RunPaths.in_folder(folder / 'out'), activations_file=folder / 'acts.npy',\n"
        "                      config=TrainConfig(min_steps=0, cpu_bf16='off', hidden_dim=16, max_epochs=1, sae_batch_tokens=64, min_loss=0)))\n"
        "assert outcome.status == 'completed', outcome\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[3])
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_a_held_out_tail_inside_the_last_sequence_is_measured_on_that_sequence(tmp_path, tiny_gpt2_dir, sample_texts):
    corpus = tmp_path / "two-long-lines.txt"
    corpus.write_text(" ".join(sample_texts[:10]) + "\n" + " ".join(sample_texts[10:20]) + "\n")
    outcome = run(model_spec(tmp_path / "out", tiny_gpt2_dir, corpus, max_sequence_length=64))
    start, stop = outcome.result.heldout_rows
    rows_of_last = 63  # 64 positions, the BOS first, which is no row
    assert stop - rows_of_last < start < stop  # the tail starts inside the last line
    evaluation = outcome.evaluation
    assert evaluation["ce_loss_reason"] is None and isinstance(evaluation["ce_loss_recovered"], float)
    assert evaluation["ce_eval_tokens"] == rows_of_last - 1  # that line's predictions made from a row
