"""A job that completes with a useless SAE carries the engine's warnings (engine.run.verdict): in
its result document, on its page, and in `manage.py train`'s output; a usable one carries []."""
import numpy as np
import pytest
from django.test import Client

from engine.run import verdict
from tests.training.commands.test_train_command import OWN_DATABASE, last_json, train_command
from training.models import TrainingJob

pytestmark = pytest.mark.django_db

WARNING = "L0 is 0.00: every feature is silent; lower sparsity_coeff (now 10) or ask for target_l0."
CE_LOSS = ("ce_loss_clean", "ce_loss_with_sae", "ce_loss_zero_ablation", "ce_loss_recovered")


def silent_evaluation() -> dict:
    """The engine's evaluation of an SAE whose features never fire, as a run stores it."""
    from engine.evaluation.reconstruction import evaluate_sae
    from engine.trainer import TrainConfig
    from tests.engine.run.test_degenerate_sae_warnings import silent_sae
    from tests.engine.trainer.test_sae_training import sparse_data

    evaluation = evaluate_sae(silent_sae(), sparse_data(n_tokens=256), scaling_factor=1.0)
    evaluation.pop("feature_density")
    evaluation.update(dict.fromkeys(CE_LOSS), warnings=verdict.warnings(evaluation, TrainConfig(min_steps=0, cpu_bf16="off", hidden_dim=64, sparsity_coeff=10)))
    return evaluation


@pytest.fixture
def silent_job(alice):
    return TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2", layer_number=1, status="completed",
                                      evaluation=silent_evaluation())


def test_the_result_document_carries_the_warnings(alice_api, silent_job):
    body = alice_api.get(f"/api/v1/train/{silent_job.id}/result").json()
    assert body["warnings"][0] == WARNING and body["warnings"] == body["evaluation"]["warnings"]


def test_a_job_evaluated_before_warnings_has_an_empty_list(alice_api, silent_job):
    evaluation = silent_job.evaluation
    del evaluation["warnings"]
    TrainingJob.objects.filter(pk=silent_job.pk).update(evaluation=evaluation)
    assert alice_api.get(f"/api/v1/train/{silent_job.id}/result").json()["warnings"] == []


def test_the_job_page_shows_the_warnings_in_a_box(alice, silent_job):
    client = Client()
    client.force_login(alice)
    html = client.get(f"/jobs/{silent_job.id}/").content.decode()
    assert 'id="warnings"' in html and WARNING in html


@pytest.mark.slow
@OWN_DATABASE
def test_manage_py_train_prints_the_warnings_of_an_sae_penalised_to_nothing(tmp_path, django_db_blocker):
    activations = np.random.default_rng(0).normal(size=(2000, 16)).astype(np.float32) + 5.0
    np.save(tmp_path / "acts.npy", activations)
    done = train_command(tmp_path)("--activations", str(tmp_path / "acts.npy"), "--hidden-dim", "32", "--max-epochs", "2",
                                   "--min-loss", "0", "--sparsity-coeff", "10", "--no-progress")
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert result["status"] == "completed"
    assert result["warnings"] and result["warnings"] == result["evaluation"]["warnings"]
    for warning in result["warnings"]:
        assert f"Warning: {warning}" in done.stderr
