import json

import pytest

pytestmark = pytest.mark.django_db


def test_a_json_body_over_the_limit_is_refused_before_it_is_parsed(alice_api, settings):
    body = json.dumps({"model_name": "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 10), "corpus_file": "a.txt"})
    response = alice_api.post("/api/v1/train", body, content_type="application/json")
    assert response.status_code == 413
    assert "MISTUDIO_REQUEST_MAX_BYTES" in response.json()["detail"]


@pytest.mark.slow
def test_a_body_under_the_limit_is_parsed(alice_api):
    response = alice_api.post("/api/v1/validate-model", {"model_name": "sentence-transformers/all-MiniLM-L6-v2"},
                              format="json")
    assert response.status_code == 200
