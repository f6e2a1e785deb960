"""A service's refusal names the request field it is about (ServiceError.field), so that a form can
show it next to that field; the API keeps its {"detail": ...} and adds that field to `errors`, as a
serializer's validation error does. Refusals no one field is about have no `errors`."""
import pytest

from corpora.services import corpus_add
from mistudio.errors import ServiceError
from tests.model_fixtures import SAMPLE_CORPUS
from training.requests import JobRequest
from training.services import job_create

pytestmark = pytest.mark.django_db

GOOD = {"model_name": "tiny/gpt2", "corpus_file": "reviews.txt", "layer_number": 1, "hidden_dim": 16, "max_epochs": 2}


@pytest.fixture
def corpus(alice):
    return corpus_add(owner=alice, name="reviews.txt", chunks=[SAMPLE_CORPUS.read_bytes()])


@pytest.mark.parametrize("fields,field", [
    ({"layer_number": 3}, "layer_number"),
    ({"corpus_file": "someone-elses.txt"}, "corpus_file"),
    ({"model_name": "/etc"}, "model_name"),
    ({"architecture": "topk"}, "k"),
    ({"architecture": "jumprelu", "k": 4}, "k"),
    ({"gpu_id": 99}, "gpu_id"),
])
@pytest.mark.slow
def test_the_api_adds_the_field_a_refusal_is_about_to_errors(alice_api, corpus, hub_models, fields, field):
    response = alice_api.post("/api/v1/train", {**GOOD, **fields}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"detail", "errors"}
    assert body["errors"] == {field: [body["detail"]]}


def test_a_refusal_of_the_whole_request_has_no_errors(alice_api, corpus, hub_models, monkeypatch):
    from engine import disk

    monkeypatch.setattr(disk, "free_bytes", lambda folder: 1000)
    response = alice_api.post("/api/v1/train", GOOD, format="json")
    assert response.status_code == 400
    assert set(response.json()) == {"detail"}


def test_check_memory_names_the_field_too(alice_api, hub_models):
    body = alice_api.get("/api/v1/check-memory/tiny/gpt2", {"layer_number": 9}).json()
    assert body == {"detail": "layer_number 9 is out of range: tiny/gpt2 has 3 layers.",
                    "errors": {"layer_number": ["layer_number 9 is out of range: tiny/gpt2 has 3 layers."]}}


@pytest.mark.parametrize("fields,field", [
    # What the API's serializer refuses first, refused by the service too for the CLI and direct callers.
    ({"hook_point": "resid_mid"}, "hook_point"),
    ({"packing": "zigzag"}, "packing"),
    ({"cache_activations": "sometimes"}, "cache_activations"),
    ({"training_tokens": 0}, "training_tokens"),
    ({"architecture": "dense"}, "architecture"),
    ({"gpu_ids": [0, 0]}, "gpu_ids"),
    ({"model_name": ""}, "model_name"),
    ({"corpus_file": ""}, "corpus_file"),
])
@pytest.mark.slow
def test_the_service_names_the_field_of_what_it_refuses(alice, corpus, hub_models, fields, field):
    with pytest.raises(ServiceError) as refused:
        job_create(owner=alice, request=JobRequest(**{**GOOD, **fields}), enqueue=False)
    assert refused.value.field == field
    assert field in refused.value.message
