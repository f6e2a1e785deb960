"""A metric a run could not measure is stored as null with its reason, never as NaN, which JSON (and
SQLite's and PostgreSQL's JSON columns) refuse: the job's last write goes through and it ends as
it should, not failed on its own result nor left running. Real jobs, run in-process."""
import json
from pathlib import Path

import numpy as np
import pytest

from corpora.services import corpus_add_from_path
from tests.model_fixtures import SAMPLE_CORPUS
from training import services
from training.models import TrainingJob
from training.worker.job import job_run

pytestmark = pytest.mark.django_db(transaction=True)


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.slow
def test_a_held_out_set_too_small_to_vary_completes_with_a_null_explained_variance_and_its_reason(
        alice, alice_api, client, tmp_path, settings):
    settings.MIN_SAE_STEPS = 0
    path = tmp_path / "acts.npy"  # 20 rows: 5% held out is a single token, whose variance is 0
    np.save(path, np.random.default_rng(0).normal(size=(20, 16)).astype(np.float32))
    request = services.JobRequest(activations_file=str(path), hidden_dim=32, min_loss=0, max_epochs=2)
    job = job_run(services.job_create(owner=alice, request=request, enqueue=False).id)

    assert job.status == TrainingJob.Status.COMPLETED, job.message
    evaluation = job.evaluation
    assert evaluation["eval_tokens"] == 1 and evaluation["explained_variance"] is None
    assert evaluation["explained_variance_reason"].startswith("the 1 held-out token(s) do not vary")
    assert isinstance(evaluation["mse"], float) and "mse_reason" not in evaluation
    response = alice_api.get(f"/api/v1/train/{job.id}/result")
    assert response.status_code == 200
    document = strict_json(response.content.decode())
    assert document["evaluation"]["explained_variance"] is None
    assert "do not vary" in document["evaluation"]["explained_variance_reason"]
    metadata = strict_json(Path(job.metadata_path).read_text())
    assert metadata["evaluation"]["explained_variance"] is None
    client.force_login(alice)
    page = client.get(f"/jobs/{job.id}/")
    assert page.status_code == 200 and "do not vary" in page.content.decode()


def test_the_job_page_shows_a_prefix_that_was_not_measured_as_a_dash(alice, client):
    job = TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2", status=TrainingJob.Status.COMPLETED,
                                     evaluation={"l0": 3.0, "prefix_explained_variance": {"8": None, "32": 0.5},
                                                 "prefix_explained_variance_reason": "the 1 held-out token(s) do not vary"})
    client.force_login(alice)
    page = client.get(f"/jobs/{job.id}/")
    assert page.status_code == 200 and "8: -, 32: 0.5" in page.content.decode()


@pytest.mark.slow
def test_a_job_cancelled_before_its_first_step_ends_cancelled_with_no_loss_and_says_why(
        alice, alice_api, hub_models, monkeypatch):
    corpus_add_from_path(owner=alice, path=SAMPLE_CORPUS)
    request = services.JobRequest(model_name="tiny/gpt2", corpus_file=SAMPLE_CORPUS.name, layer_number=0,
                                  hidden_dim=32, max_epochs=1)
    job = services.job_create(owner=alice, request=request, enqueue=False)
    claim = services.job_claim

    def claim_then_cancel(job_id):
        claimed = claim(job_id)
        services.job_cancel(claimed)  # the user's cancel, arriving as the worker starts
        return claimed

    monkeypatch.setattr(services, "job_claim", claim_then_cancel)
    job = job_run(job.id)

    assert job.status == TrainingJob.Status.CANCELLED and job.completed_at is not None
    assert job.current_loss is None and all(point["loss"] is None for point in job.training_curve or [])
    assert job.message == "Cancelled at epoch 1 before its first training step, so no loss was measured"
    status = strict_json(alice_api.get(f"/api/v1/train/{job.id}/status").content.decode())
    assert status["status"] == "cancelled" and status["current_loss"] is None
    assert "no loss was measured" in status["message"]


def test_the_ending_stores_null_with_a_reason_for_any_number_the_engine_left_unmeasured(alice):
    job = services.job_claim(TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2").pk)
    services.job_finish(job, status=TrainingJob.Status.COMPLETED, message="done", current_loss=float("nan"),
                        training_stats={"final_loss": float("nan"), "loss_history": [1.0, float("inf")]},
                        evaluation={"explained_variance": float("nan"), "prefix_explained_variance": {"8": float("nan")}})
    job.refresh_from_db()
    assert job.status == TrainingJob.Status.COMPLETED and job.current_loss is None
    assert job.training_stats["final_loss"] is None and job.training_stats["final_loss_reason"].startswith("not measured")
    assert job.training_stats["loss_history"] == [1.0, None] and "loss_history_reason" in job.training_stats
    assert job.evaluation["prefix_explained_variance"] == {"8": None}
    assert "prefix_explained_variance_reason" in job.evaluation and "explained_variance_reason" in job.evaluation
