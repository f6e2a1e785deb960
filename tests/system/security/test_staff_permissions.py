"""Through the API and the pages, staff see other users' jobs and sweeps only with the model's view
permission and cancel them only with its change permission; being staff alone shows them nothing
but their own (a superuser has every permission)."""
import pytest
from django.contrib.auth.models import Permission
from rest_framework.test import APIClient

from training.models import Sweep, TrainingJob

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_api(django_user_model):
    def make(*codenames):
        user = django_user_model.objects.create_user(f"staff-{'-'.join(codenames) or 'none'}", is_staff=True)
        user.user_permissions.set(Permission.objects.filter(content_type__app_label="training", codename__in=codenames))
        api = APIClient()
        api.force_authenticate(user)
        return api

    return make


@pytest.fixture
def alices_job(alice):
    return TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2")


def test_staff_without_permissions_see_and_cancel_nothing_of_others(staff_api, alices_job):
    api = staff_api()
    assert api.get("/api/v1/jobs").json()["total_jobs"] == 0
    assert api.get(f"/api/v1/train/{alices_job.id}/status").status_code == 404
    assert api.post(f"/api/v1/train/{alices_job.id}/cancel").status_code == 404
    alices_job.refresh_from_db()
    assert alices_job.status == TrainingJob.Status.QUEUED


def test_staff_who_may_view_see_others_jobs_but_cannot_cancel_them(staff_api, alices_job):
    api = staff_api("view_trainingjob")
    assert api.get("/api/v1/jobs").json()["total_jobs"] == 1
    assert api.get(f"/api/v1/train/{alices_job.id}/status").status_code == 200
    refused = api.post(f"/api/v1/train/{alices_job.id}/cancel")
    assert refused.status_code == 403
    assert "needs the permission to change training jobs" in refused.json()["detail"]
    alices_job.refresh_from_db()
    assert alices_job.status == TrainingJob.Status.QUEUED


def test_staff_who_may_change_cancel_others_jobs_and_a_superuser_may_too(staff_api, alices_job, charlie):
    assert staff_api("view_trainingjob", "change_trainingjob").post(f"/api/v1/train/{alices_job.id}/cancel").status_code == 200
    alices_job.refresh_from_db()
    assert alices_job.status == TrainingJob.Status.CANCELLED
    api = APIClient()
    api.force_authenticate(charlie)
    assert api.get("/api/v1/jobs").json()["total_jobs"] == 1


def test_sweeps_follow_the_same_rule(staff_api, alice, corpus_row):
    sweep = Sweep.objects.create(owner=alice, model_name="tiny/gpt2", corpus=corpus_row, layers=[1],
                                 hook_points=["resid_post"], members=[{}])
    TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2", sweep=sweep)
    assert staff_api().get(f"/api/v1/sweeps/{sweep.id}").status_code == 404
    viewer = staff_api("view_sweep")
    assert viewer.get(f"/api/v1/sweeps/{sweep.id}").status_code == 200
    assert viewer.post(f"/api/v1/sweeps/{sweep.id}/cancel").status_code == 403
    assert staff_api("view_sweep", "change_sweep").post(f"/api/v1/sweeps/{sweep.id}/cancel").status_code == 200


@pytest.fixture
def corpus_row(alice, tmp_path):
    from corpora.models import Corpus

    path = tmp_path / "c.txt"
    path.write_text("a line\n")
    return Corpus.objects.create(owner=alice, name="c.txt", path=str(path), format="txt", size_bytes=7, lines_count=1,
                                 documents_count=1, text_bytes=6)
