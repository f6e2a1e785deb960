"""Many jobs and sweeps made in the same second, at once, through the API on the real database: each
gets a distinct id in the seed's format and its success answer (the seed's 200 for a job, 201 for
a sweep), never a 500. The random digits are narrowed to
a few dozen and the clock is held on one second, so ids do collide and the test can fail."""
import re
from datetime import datetime, timezone as dt_timezone
from types import SimpleNamespace

import pytest
from knox.models import AuthToken
from rest_framework.test import APIClient

from tests.concurrency import at_once
from tests.model_fixtures import SAMPLE_CORPUS
from training import models
from training.models import Sweep, TrainingJob

pytestmark = pytest.mark.django_db(transaction=True)

SECOND = datetime(2026, 12, 5, 10, 30, 15, tzinfo=dt_timezone.utc)
JOBS = 16
SWEEPS = 4


@pytest.fixture
def crowded_ids(monkeypatch):
    """Every id drawn in one second from 40 suffixes: 16 jobs at once collide with near certainty
    (birthday odds above 95%), yet all fit."""
    real = models.secrets.randbelow
    monkeypatch.setattr(models, "secrets", SimpleNamespace(randbelow=lambda n: real(40)))
    monkeypatch.setattr(models, "timezone", SimpleNamespace(now=lambda: SECOND))


@pytest.fixture
def corpus(upload):
    assert upload(SAMPLE_CORPUS.name, SAMPLE_CORPUS.read_bytes()).status_code == 200


def client_for(user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {AuthToken.objects.create(user=user)[1]}")
    return client


@pytest.mark.slow
def test_jobs_made_in_the_same_second_get_distinct_ids(alice, hub_models, corpus, crowded_ids):
    clients = [client_for(alice) for _ in range(JOBS)]
    body = {"model_name": "tiny/gpt2", "corpus_file": SAMPLE_CORPUS.name, "layer_number": 1, "hidden_dim": 16}
    responses = at_once(JOBS, lambda _: clients.pop().post("/api/v1/train", body, format="json"))
    assert [r.status_code for r in responses] == [200] * JOBS, [r.json() for r in responses if r.status_code != 200]
    ids = [r.json()["job_id"] for r in responses]
    assert len(set(ids)) == JOBS and TrainingJob.objects.count() == JOBS
    assert all(re.fullmatch(r"train_20261205_103015_\d{4}", job_id) for job_id in ids)


@pytest.mark.slow
def test_sweeps_made_in_the_same_second_get_distinct_sweep_and_member_ids(alice, hub_models, corpus, crowded_ids):
    clients = [client_for(alice) for _ in range(SWEEPS)]
    body = {"model_name": "tiny/gpt2", "corpus_file": SAMPLE_CORPUS.name, "layers": [0, 1], "hidden_dim": 16,
            "architecture": "topk", "k": 4, "members": [{}, {"k": 8}]}
    responses = at_once(SWEEPS, lambda _: clients.pop().post("/api/v1/sweeps", body, format="json"))
    assert [r.status_code for r in responses] == [201] * SWEEPS, [r.json() for r in responses if r.status_code != 201]
    sweep_ids = [r.json()["sweep_id"] for r in responses]
    job_ids = [job_id for r in responses for job_id in r.json()["job_ids"]]
    assert len(set(sweep_ids)) == SWEEPS == Sweep.objects.count()
    assert len(set(job_ids)) == 4 * SWEEPS == TrainingJob.objects.count()
    assert all(re.fullmatch(r"sweep_20261205_103015_\d{4}", sweep_id) for sweep_id in sweep_ids)
