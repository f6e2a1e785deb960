"""A job's feature page before its features exist answers as the API does: 409 with the reason, as a
page, never a 500; someone else's job stays a 404."""
import pytest

from training.models import TrainingJob

pytestmark = pytest.mark.django_db


@pytest.fixture
def queued_job(alice):
    return TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2")


def test_the_feature_page_of_a_queued_job_says_its_features_are_not_ready(queued_job, client, alice, alice_api):
    client.force_login(alice)
    page = client.get(f"/jobs/{queued_job.id}/features/0/")
    api = alice_api.get(f"/api/v1/train/{queued_job.id}/features/0")
    assert page.status_code == api.status_code == 409
    html = page.content.decode()
    assert 'id="features-unavailable"' in html and api.json()["detail"] in html
    assert "its features appear when the analysis phase ends" in html
    assert f'href="/jobs/{queued_job.id}/"' in html


def test_the_feature_page_of_a_job_that_failed_before_its_analysis_says_there_are_none(alice, client):
    job = TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2", status=TrainingJob.Status.FAILED,
                                     message="Training failed: the corpus has no text")
    client.force_login(alice)
    page = client.get(f"/jobs/{job.id}/features/3/")
    assert page.status_code == 409
    assert "has no feature analysis: it ended failed before the analysis phase" in page.content.decode()


def test_someone_elses_queued_job_is_still_not_found(queued_job, client, bob):
    client.force_login(bob)
    assert client.get(f"/jobs/{queued_job.id}/features/0/").status_code == 404
