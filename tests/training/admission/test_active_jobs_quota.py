"""MISTUDIO_MAX_ACTIVE_JOBS_PER_USER: a user's queued and running jobs, a sweep's members each
counted, are at most that many; the next is a 429 that names the limit and the count, and a job
that ends frees its place. Staff are exempt; another user's jobs do not count."""
import pytest

from training.models import TrainingJob

pytestmark = pytest.mark.django_db

REQUEST = {"model_name": "tiny/gpt2", "corpus_file": "reviews.txt", "layer_number": 1, "hidden_dim": 16,
           "max_epochs": 1}


@pytest.fixture
def limit_two(settings):
    settings.MAX_ACTIVE_JOBS_PER_USER = 2
    return 2


def train(client, **fields):
    return client.post("/api/v1/train", {**REQUEST, **fields}, format="json")


def test_the_job_past_the_limit_is_a_429_naming_the_limit_and_the_count(alice_api, corpus, hub_models, limit_two):
    assert train(alice_api).status_code == 200
    assert train(alice_api).status_code == 200
    response = train(alice_api)
    assert response.status_code == 429
    detail = response.json()["detail"]
    assert "You have 2 jobs queued or running and may have at most 2 at once" in detail
    assert "MISTUDIO_MAX_ACTIVE_JOBS_PER_USER" in detail
    assert TrainingJob.objects.count() == 2


def test_a_job_that_ends_frees_its_place(alice_api, corpus, hub_models, limit_two):
    first, second = train(alice_api).json()["job_id"], train(alice_api).json()["job_id"]
    assert train(alice_api).status_code == 429
    assert alice_api.post(f"/api/v1/train/{first}/cancel").status_code == 200
    assert train(alice_api).status_code == 200
    assert train(alice_api).status_code == 429
    TrainingJob.objects.filter(pk=second).update(status=TrainingJob.Status.COMPLETED)
    assert train(alice_api).status_code == 200


def test_a_running_job_counts_as_a_queued_one_does(alice_api, corpus, hub_models, limit_two):
    running = train(alice_api).json()["job_id"]
    TrainingJob.objects.filter(pk=running).update(status=TrainingJob.Status.RUNNING)
    assert train(alice_api).status_code == 200
    assert train(alice_api).status_code == 429


def test_a_sweep_counts_each_member(alice_api, corpus, hub_models, settings):
    settings.MAX_ACTIVE_JOBS_PER_USER = 3
    sweep = {**REQUEST, "members": [{"hidden_dim": 16}, {"hidden_dim": 32}]}
    response = alice_api.post("/api/v1/sweeps", {**sweep, "layers": [0, 1]}, format="json")
    assert response.status_code == 429
    assert "a sweep of 4 members (each counts as a job)" in response.json()["detail"]
    assert "You have 0 jobs queued or running and may have at most 3" in response.json()["detail"]
    assert alice_api.post("/api/v1/sweeps", sweep, format="json").status_code == 201
    assert train(alice_api).status_code == 200
    response = train(alice_api)
    assert response.status_code == 429 and "You have 3 jobs queued or running" in response.json()["detail"]


@pytest.mark.slow
def test_another_users_jobs_do_not_count(alice_api, bob_api, corpus, hub_models, upload, sample_corpus_bytes,
                                         limit_two):
    assert upload("reviews.txt", sample_corpus_bytes, client=bob_api).status_code == 200
    assert train(alice_api).status_code == 200 and train(alice_api).status_code == 200
    assert train(bob_api).status_code == 200


def test_staff_are_exempt(charlie_api, hub_models, upload, sample_corpus_bytes, settings):
    settings.MAX_ACTIVE_JOBS_PER_USER = 1
    assert upload("reviews.txt", sample_corpus_bytes, client=charlie_api).status_code == 200
    assert train(charlie_api).status_code == 200
    assert train(charlie_api).status_code == 200


def test_zero_turns_the_limit_off(alice_api, corpus, hub_models, settings):
    settings.MAX_ACTIVE_JOBS_PER_USER = 0
    assert all(train(alice_api).status_code == 200 for _ in range(3))
