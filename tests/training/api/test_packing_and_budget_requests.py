"""A job's packing, token budget and cache mode through the API: the corpus format's packing when
none is asked for, the ones asked for on the job, its run's spec and its documents, and a 400 that
lists the valid names for anything else."""
import numpy as np
import pytest

from mistudio.errors import ServiceError
from training import services
from training.documents import result_document, status_document
from training.worker.spec import job_spec
from training.models import TrainingJob

pytestmark = pytest.mark.django_db


def train(client, **fields):
    return client.post("/api/v1/train", {"model_name": "tiny/gpt2", "corpus_file": "reviews.txt", "layer_number": 1,
                                         **fields}, format="json")


def test_a_txt_corpus_is_read_line_by_line_with_no_budget_and_an_automatic_cache_by_default(alice_api, corpus, hub_models):
    response = train(alice_api)
    assert response.status_code == 200, response.json()
    job = TrainingJob.objects.get(pk=response.json()["job_id"])
    assert (job.packing, job.training_tokens, job.cache_activations) == ("lines", None, "auto")
    status = alice_api.get(f"/api/v1/train/{job.id}/status").json()
    assert (status["packing"], status["training_tokens"], status["cache_activations"]) == ("lines", None, "auto")


def test_a_job_takes_concat_packing_a_token_budget_and_a_cache_mode_and_its_run_gets_them(alice_api, corpus, hub_models):
    response = train(alice_api, packing="concat", training_tokens=5000, cache_activations="never")
    assert response.status_code == 200, response.json()
    job = services.job_claim(response.json()["job_id"])  # a run's spec, as the worker builds it once it claimed the job
    assert (job.packing, job.training_tokens, job.cache_activations) == ("concat", 5000, "never")
    spec = job_spec(job, "cpu")
    assert (spec.packing, spec.training_tokens, spec.cache_activations, spec.text_field) == ("concat", 5000, "never", "text")
    for document in (result_document(job), status_document(job)):
        assert (document["packing"], document["training_tokens"], document["cache_activations"]) == ("concat", 5000, "never")


@pytest.mark.parametrize("field,value,detail", [
    ("packing", "words", 'packing: "words" is not a packing: choose one of lines, documents, concat.'),
    ("cache_activations", "sometimes",
     'cache_activations: "sometimes" is not a cache mode: choose one of auto, always, never.'),
    ("training_tokens", 0, "training_tokens: a budget is at least 1 token; leave it null to train max_epochs passes."),
])
@pytest.mark.slow
def test_an_unknown_packing_or_cache_mode_or_an_empty_budget_is_a_400_that_says_what_is_valid(
        alice_api, corpus, field, value, detail):
    response = train(alice_api, **{field: value})
    assert response.status_code == 400
    assert response.json()["detail"] == detail
    assert field in response.json()["errors"]
    assert not TrainingJob.objects.exists()


@pytest.mark.parametrize("fields,detail", [
    ({"packing": "words"}, "packing 'words' is not a packing: choose one of lines, documents, concat."),
    ({"cache_activations": "sometimes"},
     "cache_activations 'sometimes' is not a cache mode: choose one of auto, always, never."),
    ({"training_tokens": -3}, "training_tokens -3: a budget is at least 1 token; leave it null to train max_epochs passes."),
])
def test_the_service_refuses_the_same_for_callers_without_the_serializer(alice, fields, detail, tmp_path):
    path = tmp_path / "acts.npy"
    np.save(path, np.zeros((16, 4), np.float32))
    with pytest.raises(ServiceError) as refused:
        services.job_create(owner=alice, request=services.JobRequest(activations_file=str(path), **fields), enqueue=False)
    assert refused.value.message == detail


def test_a_job_on_an_activations_file_keeps_its_budget_but_records_no_packing_or_cache_mode(alice, tmp_path):
    path = tmp_path / "acts.npy"
    np.save(path, np.zeros((16, 4), np.float32))
    job = services.job_create(owner=alice, request=services.JobRequest(
        activations_file=str(path), packing="concat", training_tokens=8, cache_activations="always"), enqueue=False)
    assert (job.packing, job.training_tokens, job.cache_activations, job.disk_plan) == (None, 8, "", None)
    document = result_document(job)
    assert (document["packing"], document["training_tokens"], document["cache_activations"]) == (None, 8, None)
    spec = job_spec(job, "cpu")
    assert (spec.packing, spec.training_tokens, spec.cache_activations) == (None, 8, "auto")


def test_the_job_page_shows_the_packing_the_budget_and_the_cache_mode(client, alice):
    job = TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2", packing="concat", training_tokens=1_000_000,
                                     cache_activations="never")
    client.force_login(alice)
    page = client.get(f"/jobs/{job.id}/").content.decode()
    assert "Packing" in page and "concat" in page
    assert "Token budget (training_tokens)" in page and "1,000,000" in page
    assert "Cache activations" in page and "never" in page


def test_the_job_page_shows_the_disk_plan_in_a_line(client, alice):
    plan = {"cache": True, "passes": 5, "rows_per_pass": 7000, "cache_bytes": 3 * 1024**3, "checkpoint_bytes": 1,
            "needed_bytes": 3 * 1024**3 + 1, "free_bytes": 100 * 1024**3, "reason": "5 passes, and the cache fits",
            "bytes_per_token": 4.0, "tokens_estimated_from": "measured"}
    job = TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2", packing="lines", disk_plan=plan)
    client.force_login(alice)
    page = client.get(f"/jobs/{job.id}/").content.decode()
    assert "Disk plan" in page
    assert "cache of 3.00 GB, 5 pass(es) of about 7,000 tokens; needs 3.00 GB of 100.0 GB free" in page
