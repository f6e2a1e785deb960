"""The admin's cancel actions change jobs: a staff user with only the view permission browses jobs
and sweeps but cannot cancel them (the action is neither offered nor run); with the change
permission, or as a superuser, the action cancels."""
import pytest
from django.contrib.auth.models import Permission

from training.models import Sweep, TrainingJob

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_with(django_user_model, client):
    def login(*codenames):
        user = django_user_model.objects.create_user(f"staff-{'-'.join(codenames)}", password="staff-password-1",
                                                     is_staff=True)
        user.user_permissions.set(Permission.objects.filter(content_type__app_label="training", codename__in=codenames))
        client.force_login(user)
        return client

    return login


@pytest.fixture
def queued(alice):
    return TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2")


def cancel(client, job):
    return client.post("/admin/training/trainingjob/", {"action": "cancel_jobs", "_selected_action": [job.id]},
                       follow=True)


def test_a_staff_user_who_may_only_view_jobs_cannot_cancel_them(staff_with, queued):
    client = staff_with("view_trainingjob")
    listing = client.get("/admin/training/trainingjob/")
    assert listing.status_code == 200 and queued.id in listing.content.decode()
    assert "cancel_jobs" not in listing.content.decode()
    assert cancel(client, queued).status_code == 200
    queued.refresh_from_db()
    assert queued.status == TrainingJob.Status.QUEUED and queued.cancel_requested_at is None


def test_a_staff_user_who_may_change_jobs_cancels_them(staff_with, queued):
    client = staff_with("view_trainingjob", "change_trainingjob")
    assert "cancel_jobs" in client.get("/admin/training/trainingjob/").content.decode()
    assert "Cancelled or asked to stop 1 job" in cancel(client, queued).content.decode()
    queued.refresh_from_db()
    assert queued.status == TrainingJob.Status.CANCELLED


def test_a_staff_user_who_may_only_view_sweeps_cannot_cancel_them(staff_with, alice, corpus_row):
    sweep = Sweep.objects.create(owner=alice, model_name="tiny/gpt2", corpus=corpus_row, layers=[0],
                                 hook_points=["resid_post"], members=[{}])
    member = TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2", sweep=sweep)
    client = staff_with("view_sweep")
    assert "cancel_sweeps" not in client.get("/admin/training/sweep/").content.decode()
    client.post("/admin/training/sweep/", {"action": "cancel_sweeps", "_selected_action": [sweep.id]}, follow=True)
    member.refresh_from_db()
    assert member.status == TrainingJob.Status.QUEUED
    client = staff_with("view_sweep", "change_sweep")
    client.post("/admin/training/sweep/", {"action": "cancel_sweeps", "_selected_action": [sweep.id]}, follow=True)
    member.refresh_from_db()
    assert member.status == TrainingJob.Status.CANCELLED


@pytest.fixture
def corpus_row(alice):
    from corpora.services import corpus_add_from_path
    from tests.model_fixtures import SAMPLE_CORPUS

    return corpus_add_from_path(owner=alice, path=SAMPLE_CORPUS)
