"""Staff browse jobs, cancel them and upload corpora in the Django admin."""
import html
from pathlib import Path

import pytest
from django.contrib.admin.utils import quote
from django.contrib.staticfiles import finders
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from corpora.models import Corpus
from training.models import Checkpoint, TrainingJob

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, charlie):
    client.force_login(charlie)
    return client


@pytest.fixture
def jobs(alice):
    done = TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2", status="completed", progress=1.0,
                                      current_loss=0.0123, training_stats={"final_loss": 0.0123})
    Checkpoint.objects.create(job=done, epoch=10, step=100, path="/data/models/x_checkpoint_10.pt")
    queued = TrainingJob.objects.create(owner=alice, model_name="other/model", layer_number=4)
    return done, queued


def test_the_job_list_shows_status_progress_and_filters(staff_client, jobs):
    page = staff_client.get("/admin/training/trainingjob/").content.decode()
    done, queued = jobs
    assert done.id in page and queued.id in page and "100%" in page and "0.0123" in page
    filtered = staff_client.get("/admin/training/trainingjob/?status__exact=queued").content.decode()
    assert queued.id in filtered and done.id not in filtered
    searched = staff_client.get("/admin/training/trainingjob/?q=other").content.decode()
    assert queued.id in searched and done.id not in searched


def test_a_job_page_shows_parameters_metrics_and_checkpoints(staff_client, jobs):
    done, _ = jobs
    # Job ids hold underscores, which the admin escapes in its URLs (an id with "_26" in it would
    # otherwise read as "&"): follow the link the job list itself shows.
    url = reverse("admin:training_trainingjob_change", args=[quote(done.id)])
    assert url in staff_client.get("/admin/training/trainingjob/").content.decode()
    response = staff_client.get(url)
    assert response.status_code == 200
    page = response.content.decode()
    assert "Sparsity coeff" in page and "final_loss" in page and "x_checkpoint_10.pt" in page


def test_the_job_list_shows_a_progress_bar_a_status_badge_and_a_link_to_each_page(staff_client, jobs, alice):
    done, queued = jobs
    running = TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2", status="running", progress=0.375)
    page = staff_client.get("/admin/training/trainingjob/").content.decode()
    assert '<span class="progress-bar"><span data-share="38"></span></span> 38%' in page  # admin.js draws it
    assert 'data-share="100"' in page and 'data-share="0"' in page
    assert '<span class="status-badge status-completed">Completed<' in page  # admin.css colours it
    assert 'status-running">Running<' in page and 'status-queued">Queued<' in page
    assert "training/admin.css" in page and "training/admin.js" in page
    for job in (done, queued, running):
        assert f'<a class="job-page-link" href="/jobs/{job.id}/">View</a>' in page


def test_the_status_badges_tell_failed_from_cancelled(staff_client, alice):
    TrainingJob.objects.create(owner=alice, model_name="a", status="failed")
    TrainingJob.objects.create(owner=alice, model_name="b", status="cancelled")
    page = staff_client.get("/admin/training/trainingjob/").content.decode()
    assert 'status-failed">Failed<' in page and 'status-cancelled">Cancelled<' in page
    colours = Path(finders.find("training/admin.css")).read_text()
    assert ".status-failed { background: #cf222e; }" in colours and ".status-cancelled { background: #6e7781; }" in colours


def test_a_job_change_form_links_to_the_job_page(staff_client, jobs):
    done, _ = jobs
    page = staff_client.get(reverse("admin:training_trainingjob_change", args=[quote(done.id)])).content.decode()
    assert f'href="{reverse("job-page", args=[done.id])}">View</a>' in page


def test_the_admin_index_links_to_the_jobs_and_gpu_pages(staff_client):
    page = staff_client.get("/admin/").content.decode()
    assert '<a href="/jobs/" id="jobs-page-link">Jobs</a>' in page
    assert '<a href="/gpus/" id="gpu-page-link">GPUs</a>' in page
    assert "Training jobs" in page  # the app list is still there


def test_staff_cancel_jobs_with_an_admin_action(staff_client, jobs):
    done, queued = jobs
    response = staff_client.post("/admin/training/trainingjob/", {
        "action": "cancel_jobs", "_selected_action": [done.id, queued.id]}, follow=True)
    page = response.content.decode()
    queued.refresh_from_db()
    assert queued.status == "cancelled"
    assert "already completed" in page and "Cancelled or asked to stop 1 job" in page


def test_staff_upload_a_corpus_through_the_admin(staff_client, charlie):
    response = staff_client.post("/admin/corpora/corpus/add/",
                                 {"file": SimpleUploadedFile("notes.txt", b"alpha\nbeta\n")}, follow=True)
    assert response.status_code == 200
    corpus = Corpus.objects.get(name="notes.txt")
    assert corpus.owner == charlie and corpus.lines_count == 2 and corpus.size_bytes == 11


def test_the_admin_upload_applies_the_api_checks(staff_client):
    response = staff_client.post("/admin/corpora/corpus/add/",
                                 {"file": SimpleUploadedFile("latin.txt", "café au lait".encode("latin-1"))})
    assert "not valid UTF-8" in response.content.decode()
    assert not Corpus.objects.exists()


@pytest.fixture
def csrf_staff_client(charlie):
    """A browser's client: the CSRF token is checked, as it is for a real staff member."""
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(charlie)
    client.get("/admin/corpora/corpus/add/")
    return client, client.cookies["csrftoken"].value


def multipart(name, token):
    """A form body with the file name exactly as given: Django's test client would strip folders
    from it (as Django's parser does) before the server could see them."""
    return (
        "--BOUNDARY\r\n"
        'Content-Disposition: form-data; name="csrfmiddlewaretoken"\r\n\r\n'
        f"{token}\r\n"
        "--BOUNDARY\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: text/plain\r\n\r\nalpha\nbeta\n\r\n--BOUNDARY--\r\n"
    ).encode()


@pytest.mark.parametrize("name", ["../../x.txt", "..\\secrets.txt", "/abs/path.txt", "notes/../../x.txt"])
def test_an_admin_upload_named_with_folders_is_refused_as_the_api_refuses_it(csrf_staff_client, alice_api, name):
    client, token = csrf_staff_client
    refused = client.generic("POST", "/admin/corpora/corpus/add/", multipart(name, token),
                             content_type="multipart/form-data; boundary=BOUNDARY")
    assert refused.status_code == 302  # back to the upload form, with the reason as a message
    response = client.get(refused.url)
    api = alice_api.generic("POST", "/api/v1/upload", multipart(name, ""),
                            content_type="multipart/form-data; boundary=BOUNDARY")
    assert api.status_code == 400
    # The same message, word for word (the admin page escapes its quotes).
    assert "is not allowed" in api.json()["detail"]
    assert html.escape(api.json()["detail"]) in response.content.decode()
    assert not Corpus.objects.exists()


def test_an_admin_upload_with_a_plain_name_in_a_hand_written_body_is_stored(csrf_staff_client):
    client, token = csrf_staff_client
    client.generic("POST", "/admin/corpora/corpus/add/", multipart("notes.txt", token),
                   content_type="multipart/form-data; boundary=BOUNDARY")
    assert Corpus.objects.get().lines_count == 2


def test_the_admin_upload_still_checks_the_csrf_token(csrf_staff_client):
    client, token = csrf_staff_client
    refused = client.post("/admin/corpora/corpus/add/", {"file": SimpleUploadedFile("notes.txt", b"alpha\n")})
    assert refused.status_code == 403
    accepted = client.post("/admin/corpora/corpus/add/", {"file": SimpleUploadedFile("notes.txt", b"alpha\n"),
                                                           "csrfmiddlewaretoken": token}, follow=True)
    assert accepted.status_code == 200
    assert Corpus.objects.get().name == "notes.txt"


def test_people_who_are_not_staff_are_kept_out(client, alice):
    client.force_login(alice)
    assert client.get("/admin/training/trainingjob/").status_code == 302


def test_an_oversized_admin_upload_is_refused_with_a_message(staff_client, settings):
    settings.CORPUS_MAX_BYTES = 10
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 0
    response = staff_client.post("/admin/corpora/corpus/add/",
                                 {"file": SimpleUploadedFile("big.txt", b"x" * 100_000)}, follow=True)
    assert response.status_code == 200
    assert "MISTUDIO_CORPUS_MAX_BYTES" in response.content.decode()
    assert not Corpus.objects.exists()


def test_a_job_page_shows_its_hook_point_and_special_token_settings(staff_client, alice):
    job = TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2", hook_point="mlp_out", prepend_bos=False)
    page = staff_client.get(reverse("admin:training_trainingjob_change", args=[quote(job.id)])).content.decode()
    assert "Hook point" in page and "mlp_out" in page
    assert "Exclude special tokens" in page and "Prepend bos" in page
    filtered = staff_client.get("/admin/training/trainingjob/?hook_point__exact=mlp_out").content.decode()
    assert job.id in filtered


def test_a_job_page_shows_its_packing_budget_cache_mode_and_disk_plan(staff_client, alice):
    plan = {"cache": False, "passes": 3, "rows_per_pass": 1234, "cache_bytes": 0, "checkpoint_bytes": 99,
            "needed_bytes": 99, "free_bytes": 10**9, "reason": "the cache would not fit", "bytes_per_token": 4.2,
            "tokens_estimated_from": "measured"}
    job = TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2", packing="concat", training_tokens=777,
                                     cache_activations="never", disk_plan=plan)
    page = staff_client.get(reverse("admin:training_trainingjob_change", args=[quote(job.id)])).content.decode()
    assert "Packing" in page and "concat" in page and "777" in page and "Cache activations" in page
    assert "disk plan" in page.lower() and "the cache would not fit" in page
    filtered = staff_client.get("/admin/training/trainingjob/?cache_activations__exact=never").content.decode()
    assert job.id in filtered
