"""Each job and corpus belongs to its creator: others get a 404, staff see everything."""
import pytest

from training.models import TrainingJob

pytestmark = pytest.mark.django_db


@pytest.fixture
def alices_job(alice):
    return TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2", layer_number=1)


@pytest.mark.parametrize("method,suffix", [("get", "status"), ("get", "result"), ("post", "cancel")])
def test_someone_elses_job_is_a_404(bob_api, alices_job, method, suffix):
    response = getattr(bob_api, method)(f"/api/v1/train/{alices_job.id}/{suffix}")
    assert response.status_code == 404
    assert response.json() == {"detail": f"Job {alices_job.id} not found"}
    alices_job.refresh_from_db()
    assert alices_job.status == "queued"


def test_the_job_list_shows_only_your_own(alice_api, bob_api, alices_job):
    assert bob_api.get("/api/v1/jobs").json() == {"total_jobs": 0, "jobs": []}
    assert alice_api.get("/api/v1/jobs").json()["total_jobs"] == 1


def test_staff_see_and_cancel_everyones_jobs(charlie_api, alices_job):
    assert charlie_api.get("/api/v1/jobs").json()["total_jobs"] == 1
    assert charlie_api.get(f"/api/v1/train/{alices_job.id}/status").status_code == 200
    assert charlie_api.post(f"/api/v1/train/{alices_job.id}/cancel").json()["status"] == "cancelled"


def test_a_corpus_name_resolves_only_to_your_own_corpus(upload, bob_api, hub_models):
    assert upload("alice-notes.txt", b"private text\n").status_code == 200
    response = bob_api.post("/api/v1/train", {"model_name": "tiny/gpt2", "corpus_file": "alice-notes.txt",
                                               "layer_number": 0}, format="json")
    assert response.status_code == 400
    assert "not found" in response.json()["detail"]


def test_two_users_may_upload_the_same_name(upload, bob_api):
    assert upload("shared-name.txt", b"alice\n").status_code == 200
    assert upload("shared-name.txt", b"bob\n", client=bob_api).status_code == 200


def test_tokens_are_stored_hashed(alice_api, alice):
    from knox.models import AuthToken

    header = alice_api._credentials["HTTP_AUTHORIZATION"]
    key = header.split()[1]
    stored = AuthToken.objects.get(user=alice)
    assert key not in (stored.digest, stored.token_key)
    assert alice_api.get("/api/v1/jobs").status_code == 200
