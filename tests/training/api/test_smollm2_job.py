"""A job on the bundled SmolLM2-135M-Instruct (a real Llama-architecture causal LM) through the API
and the worker's task: it completes with next-token loss and KL measured, and its features read
through the real unembedding."""
import pytest

from engine.models.resolve import BUNDLED_CAUSAL_LM_NAME
from tests.django_fixtures import queued_tasks
from training.tasks import run_training_job

pytestmark = pytest.mark.django_db(transaction=True)  # the worker's task runs outside a test transaction


@pytest.mark.slow
def test_a_smollm2_job_completes_with_ce_loss_recovered_and_kl_in_its_result(alice_api, upload, sample_corpus_bytes,
                                                                              smollm2_converted):
    assert upload("reviews-head.txt", b"\n".join(sample_corpus_bytes.splitlines()[:160])).status_code == 200
    response = alice_api.post("/api/v1/train", {
        "model_name": BUNDLED_CAUSAL_LM_NAME, "corpus_file": "reviews-head.txt", "layer_number": 3, "hidden_dim": 256,
        "architecture": "topk", "k": 16, "max_epochs": 3, "min_loss": 0, "max_sequence_length": 32,
        "sae_batch_tokens": 256, "learning_rate": 0.001,
    }, format="json")
    assert response.status_code == 200, response.json()
    job_id = response.json()["job_id"]
    [queued] = queued_tasks()
    run_training_job(*queued["args"])  # as the worker runs it

    result = alice_api.get(f"/api/v1/train/{job_id}/result").json()
    assert result["status"] == "completed", result["message"]
    evaluation = result["evaluation"]
    # A real model on English text: a few nats per token, far below uniform over 49,152 tokens (10.8).
    assert 1.0 < evaluation["ce_loss_clean"] < 6.0
    assert evaluation["ce_loss_zero_ablation"] > evaluation["ce_loss_clean"] + 0.5
    assert isinstance(evaluation["ce_loss_recovered"], float) and evaluation["ce_loss_reason"] is None
    assert evaluation["kl_div_with_ablation"] > evaluation["kl_div_with_sae"] > 0
    assert 0 < evaluation["kl_div_score"] <= 1 and evaluation["kl_div_reason"] is None

    listing = alice_api.get(f"/api/v1/train/{job_id}/features", {"page_size": 1}).json()
    feature = alice_api.get(f"/api/v1/train/{job_id}/features/{listing['results'][0]['index']}").json()
    effect = feature["logit_effect"]
    assert feature["logit_effect_unavailable_reason"] is None
    assert len(effect["promoted"]) == 10 and len(effect["suppressed"]) == 10
    # Tokens of SmolLM2's own vocabulary, shown as text.
    assert all(isinstance(t["token"], str) and 0 <= t["token_id"] < 49152 for t in effect["promoted"])
