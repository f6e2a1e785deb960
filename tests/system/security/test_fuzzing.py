"""Schemathesis against our own OpenAPI schema: every operation, as a logged-in user, answers no 5xx
and only what the schema declares (status codes, content types, bodies).

The schema is generated in-process (what `manage.py spectacular` writes and /api/schema/ serves),
so the test needs no running server and fuzzes the WSGI application directly. alice's calls name her
real corpus, job, sweep and token wherever an operation takes an id, so they reach real objects. Hypothesis is
derandomized and bounded, so a CI run is reproducible and stays under a minute on two cores."""
import json

import pytest
import schemathesis
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from mistudio.wsgi import application

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
CORPUS = "reviews.txt"


def _openapi_document():
    document = SchemaGenerator().get_schema(request=None, public=True)
    return json.loads(OpenApiJsonRenderer().render(document))


schema = schemathesis.openapi.from_dict(_openapi_document())
schema.app = application


@pytest.fixture
def connection_kept_open():
    """The WSGI handler closes the database connection after each request, which would close the
    test's transaction; Django's own test client keeps it open the same way."""
    from django.core import signals
    from django.db import close_old_connections

    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def token(real_ids, connection_kept_open, db, settings, alice, monkeypatch):
    # Random model ids that look like hub ids go to the hub, unreachable here: with huggingface_hub
    # offline each answers its 400 at once instead of after the hub timeout.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    from mistudio.accounts import user_issue_token

    return user_issue_token(username=alice.username)[1]


@pytest.fixture
def real_ids(alice, alice_api, upload, sample_corpus_bytes, hub_models):
    """alice's corpus, a job and a sweep on it, made through the API, and a spare token of hers: the
    values every id-taking operation is then called with, so the fuzzer reaches real objects and
    not only their 404s. Made before `connection_kept_open`: Django's test client connects again
    the signal handlers that fixture disconnects."""
    from knox.settings import CONSTANTS

    from mistudio.accounts import user_issue_token

    assert upload(CORPUS, sample_corpus_bytes).status_code == 200
    base = {"model_name": "tiny/gpt2", "corpus_file": CORPUS, "hidden_dim": 16}
    job = alice_api.post("/api/v1/train", {**base, "layer_number": 1}, format="json")
    assert job.status_code == 200, job.json()
    sweep = alice_api.post("/api/v1/sweeps", {**base, "layers": [0, 1]}, format="json")
    assert sweep.status_code == 201, sweep.json()
    spare = user_issue_token(username=alice.username)[1]
    return {"job_id": job.json()["job_id"], "sweep_id": sweep.json()["sweep_id"],
            "token_key": spare[:CONSTANTS.TOKEN_KEY_LENGTH]}


def with_real_ids(case, ids):
    """The case with its path's ids replaced by real ones, and a body's corpus_file by the uploaded
    corpus; the rest of what the fuzzer drew stays."""
    real = {name: ids[name] for name in (case.path_parameters or {}) if name in ids}
    if real:
        case.path_parameters = {**case.path_parameters, **real}
    if isinstance(case.body, dict) and "corpus_file" in case.body:
        case.body = {**case.body, "corpus_file": CORPUS}
    return case


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=15, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_its_schema_says(case, real_ids, token):
    with_real_ids(case, real_ids).call_and_validate(headers={"Authorization": f"Token {token}"}, checks=CHECKS)


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=2, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_operation_answers_a_stranger_as_its_schema_says(case, connection_kept_open, db):
    case.call_and_validate(checks=CHECKS)
