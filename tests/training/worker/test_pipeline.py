"""The worker's pipeline, run in-process on real models from disk."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from corpora.services import corpus_add_from_path
from tests.model_fixtures import SAMPLE_CORPUS
from training import services
from training.models import TrainingJob
from training.worker.job import job_run

pytestmark = pytest.mark.django_db(transaction=True)


def make_job(owner, **fields):
    corpus_add_from_path(owner=owner, path=SAMPLE_CORPUS)
    request = services.JobRequest(corpus_file=SAMPLE_CORPUS.name, **fields)
    return services.job_create(owner=owner, request=request, enqueue=False)


@pytest.mark.slow
def test_it_trains_an_sae_on_per_token_activations_of_a_causal_lm(alice, hub_models, settings):
    settings.CHECKPOINT_EVERY_EPOCHS = 2
    job = make_job(alice, model_name="tiny/llama", layer_number=1, hidden_dim=64, max_epochs=4, min_loss=0,
                   learning_rate=1e-3, max_sequence_length=32, sae_batch_tokens=512)
    job = job_run(job.id)
    assert job.status == TrainingJob.Status.COMPLETED, job.message
    assert job.device == "cpu" and job.progress == 1.0 and job.current_epoch == 4
    assert job.encrypted_hf_token == ""

    activations = np.load(job.activations_path, mmap_mode="r")
    stats = job.training_stats
    # One row per real token: the corpus's lines, truncated, never mean-pooled.
    assert activations.shape == (stats["extraction"]["tokens"], 32)
    assert activations.shape[0] > 420
    assert stats["total_epochs"] == 4 and stats["stopped_reason"] == "max_epochs"
    assert stats["loss_history"][-1] < stats["loss_history"][0]
    features = stats["feature_statistics"]
    assert features["total_features"] == 64
    assert features["active_features"] + features["dead_features"] == 64
    assert 0 < features["sparsity_achieved"] < 1
    assert features["l0"] == pytest.approx(features["sparsity_achieved"] * 64, rel=1e-6)

    weights = torch.load(job.model_path, weights_only=True)
    assert weights["W_enc"].shape == (32, 64) and weights["W_dec"].shape == (64, 32)
    metadata = json.loads(Path(job.metadata_path).read_text())
    assert metadata["job_id"] == job.id and metadata["layer_number"] == 1
    assert [c.epoch for c in job.checkpoints.all()] == [2, 4]

    # Evaluation on held-out tokens, with the LM's next-token loss for a causal model.
    evaluation = job.evaluation
    assert evaluation["eval_tokens"] == activations.shape[0] - stats["training_tokens"] > 0
    assert 0 < evaluation["l0"] <= 64 and evaluation["explained_variance"] <= 1
    for key in ("ce_loss_clean", "ce_loss_with_sae", "ce_loss_zero_ablation", "ce_loss_recovered", "kl_div_with_sae",
                "kl_div_with_ablation", "kl_div_score"):
        assert isinstance(evaluation[key], float), key
    assert evaluation["ce_loss_reason"] is None
    cfg = json.loads((Path(job.exports["saelens"]) / "cfg.json").read_text())
    assert cfg["architecture"] == "standard" and cfg["d_sae"] == 64 and cfg["d_in"] == 32
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post" and cfg["metadata"]["context_size"] == 32
    assert (Path(job.exports["saelens"]) / "sparsity.safetensors").is_file()
    for checkpoint in job.checkpoints.all():
        saved = torch.load(checkpoint.path, weights_only=True)
        assert saved["epoch"] == checkpoint.epoch and saved["sae"]["W_dec"].shape == (64, 32)


@pytest.mark.slow
def test_it_trains_on_the_bundled_minilm(alice):
    job = make_job(alice, model_name="sentence-transformers/all-MiniLM-L6-v2", layer_number=5, hidden_dim=96,
                   max_epochs=2, min_loss=0, max_sequence_length=24, batch_size=32)
    job = job_run(job.id)
    assert job.status == TrainingJob.Status.COMPLETED, job.message
    assert job.model_info["architecture"] == "bert" and job.model_info["selected_layer"] == 5
    assert np.load(job.activations_path, mmap_mode="r").shape[1] == 384
    assert job.evaluation["ce_loss_clean"] is None and job.evaluation["kl_div_score"] is None
    assert "not a causal language model" in job.evaluation["ce_loss_reason"]
    assert job.evaluation["explained_variance"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("architecture,k", [("topk", 8), ("batchtopk", 8), ("jumprelu", None), ("gated", None)])
def test_each_architecture_trains_and_exports_for_saelens(alice, hub_models, architecture, k):
    from safetensors.numpy import load_file

    job = make_job(alice, model_name="tiny/gpt2", layer_number=2, hidden_dim=64, max_epochs=2, min_loss=0,
                   max_sequence_length=16, sae_batch_tokens=256, learning_rate=1e-3, architecture=architecture, k=k)
    job = job_run(job.id)
    assert job.status == TrainingJob.Status.COMPLETED, job.message
    folder = Path(job.exports["saelens"])
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == {"topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu",
                                   "gated": "gated"}[architecture]
    assert cfg.get("k") == k if architecture == "topk" else True
    weights = load_file(str(folder / "sae_weights.safetensors"))
    assert weights["W_enc"].shape == (32, 64) and weights["W_dec"].shape == (64, 32)
    assert ("threshold" in weights) == (architecture in ("batchtopk", "jumprelu"))
    assert ({"b_gate", "r_mag", "b_mag"} <= set(weights)) == (architecture == "gated")
    if architecture == "topk":
        assert job.evaluation["l0"] <= 8 + 1e-6


@pytest.mark.slow
def test_it_stops_early_below_min_loss(alice, hub_models):
    job = make_job(alice, model_name="tiny/gpt2", layer_number=0, hidden_dim=32, max_epochs=50, min_loss=1e9,
                   max_sequence_length=16)
    job = job_run(job.id)
    assert job.training_stats["stopped_reason"] == "min_loss"
    assert job.training_stats["total_epochs"] == 1


@pytest.mark.slow
def test_a_job_cancelled_while_queued_is_never_run(alice, hub_models):
    job = make_job(alice, model_name="tiny/gpt2", layer_number=0, hidden_dim=32, max_epochs=1)
    services.job_cancel(job)
    assert job_run(job.id) is None
    job.refresh_from_db()
    assert job.status == TrainingJob.Status.CANCELLED and job.started_at is None


def test_a_running_job_asked_to_stop_says_so_until_it_has_stopped(alice):
    job = services.job_claim(TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2").pk)
    services.job_update_progress(job, message="Training in progress - Epoch 1/9", current_epoch=1)
    assert services.job_cancel(job).message.startswith("Cancellation requested")
    services.job_update_progress(job, message="Training in progress - Epoch 2/9", current_epoch=2)
    job.refresh_from_db()
    assert job.message.startswith("Cancellation requested") and job.current_epoch == 2


@pytest.mark.slow
def test_a_crash_fails_the_job_with_its_reason(alice, hub_models, settings):
    job = make_job(alice, model_name="tiny/gpt2", layer_number=0, hidden_dim=32, max_epochs=1)
    Path(job.corpus.path).write_text("\n\n")  # the corpus lost its text after upload
    job = job_run(job.id)
    assert job.status == TrainingJob.Status.FAILED
    assert "no non-empty lines" in job.message and job.completed_at is not None
