"""What the evaluation after training reads is the installation's, not a request's: the held-out rows
its reconstruction metrics read (MISTUDIO_EVAL_MAX_TOKENS), the next-token predictions its CE and KL
metrics measure (MISTUDIO_CE_EVAL_TOKENS) and the memory of their logits (MISTUDIO_EVAL_LOGITS_BYTES)
are what the server spends after every job. Every job's run gets them; the result's
`evaluation.ce_eval_tokens` says how many predictions were measured."""
import pytest

from training import services
from training.worker.spec import job_spec

pytestmark = pytest.mark.django_db


def test_every_jobs_run_reads_the_installations_evaluation_bounds(settings, alice_api, corpus, hub_models):
    settings.EVAL_MAX_TOKENS, settings.CE_EVAL_TOKENS, settings.EVAL_LOGITS_BYTES = 777, 55, 3 << 20
    response = alice_api.post("/api/v1/train", {"model_name": "tiny/gpt2", "corpus_file": corpus, "layer_number": 1},
                              format="json")
    assert response.status_code == 200, response.json()
    spec = job_spec(services.job_claim(response.json()["job_id"]), "cpu")
    evaluation = spec.evaluation
    assert (evaluation.max_rows, evaluation.ce_max_tokens, evaluation.logits_bytes) == (777, 55, 3 << 20)
