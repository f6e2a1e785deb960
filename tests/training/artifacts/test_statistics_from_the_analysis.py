"""After training, a job reads its activations once more, for the feature analysis, and takes its
feature statistics from that pass; a cancel during the analysis still leaves complete statistics."""
import numpy as np
import pytest
import torch

from engine.errors import AnalysisCancelled
from engine.sae import sae_from_state_dict
from engine.evaluation.stats import feature_statistics
from tests.training.worker.test_clear_failures import run

pytestmark = pytest.mark.django_db(transaction=True)

FIELDS = dict(model_name="tiny/gpt2", layer_number=1, hidden_dim=32, max_epochs=2, min_loss=0,
              max_sequence_length=16)


def statistics_of_the_saved_sae(job):
    sae = sae_from_state_dict(torch.load(job.model_path, weights_only=True), architecture=job.architecture)
    return feature_statistics(sae, np.load(job.activations_path, mmap_mode="r"), scaling_factor=1.0)


def assert_same_statistics(ours, separate):
    for key in ("total_features", "active_features", "dead_features"):
        assert ours[key] == separate[key], key
    for key in ("mean_activation", "sparsity_achieved", "l0"):
        assert ours[key] == pytest.approx(separate[key], rel=1e-4), key


@pytest.mark.slow
def test_the_feature_statistics_come_from_the_analysis_pass(alice, hub_models, monkeypatch):
    def no_second_pass(*args, **kwargs):
        raise AssertionError("a second encode pass over the activations")

    monkeypatch.setattr("engine.evaluation.stats.feature_statistics", no_second_pass)
    job = run(alice, **FIELDS)
    assert job.status == "completed", job.message
    monkeypatch.undo()
    assert_same_statistics(job.training_stats["feature_statistics"], statistics_of_the_saved_sae(job))
    assert job.features["analyzed_tokens"] == job.training_stats["tokens"]


@pytest.mark.slow
def test_a_cancel_during_the_analysis_still_leaves_complete_statistics(alice, hub_models, monkeypatch):
    def cancelled(*args, **kwargs):
        raise AnalysisCancelled("Feature analysis was cancelled")

    monkeypatch.setattr("engine.evaluation.features.analyze_features", cancelled)
    job = run(alice, **FIELDS)
    assert job.status == "cancelled" and "during the feature analysis" in job.message
    assert job.features_dir == ""
    assert_same_statistics(job.training_stats["feature_statistics"], statistics_of_the_saved_sae(job))
