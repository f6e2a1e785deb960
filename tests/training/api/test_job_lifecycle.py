import pytest

from training.models import Checkpoint, TrainingJob

pytestmark = pytest.mark.django_db


@pytest.fixture
def queued_job(alice):
    return TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2", layer_number=1)


def test_an_unknown_job_is_a_404_in_the_seed_words(alice_api):
    for suffix in ("status", "result", "cancel"):
        method = alice_api.post if suffix == "cancel" else alice_api.get
        response = method(f"/api/v1/train/train_invalid_job_id/{suffix}")
        assert response.status_code == 404
        assert response.json() == {"detail": "Job train_invalid_job_id not found"}


def test_status_has_the_seed_fields(alice_api, queued_job):
    body = alice_api.get(f"/api/v1/train/{queued_job.id}/status").json()
    for field in ("job_id", "status", "progress", "current_epoch", "current_loss", "estimated_time_remaining",
                  "message", "model_info", "last_checkpoint", "device"):
        assert field in body
    assert body["status"] == "queued" and body["progress"] == 0.0 and body["last_checkpoint"] is None


def test_the_result_of_an_unfinished_job_is_a_409_that_says_to_poll(alice_api, queued_job):
    response = alice_api.get(f"/api/v1/train/{queued_job.id}/result")
    assert response.status_code == 409
    assert "status" in response.json()["detail"]


def test_cancelling_a_queued_job_is_immediate(alice_api, queued_job):
    body = alice_api.post(f"/api/v1/train/{queued_job.id}/cancel").json()
    assert body["status"] == "cancelled"
    queued_job.refresh_from_db()
    assert queued_job.status == "cancelled" and queued_job.completed_at is not None


def test_cancelling_a_running_job_asks_its_worker_to_stop(alice_api, queued_job):
    TrainingJob.objects.filter(pk=queued_job.pk).update(status="running")
    body = alice_api.post(f"/api/v1/train/{queued_job.id}/cancel").json()
    assert body["status"] == "running" and "Cancellation requested" in body["message"]
    queued_job.refresh_from_db()
    assert queued_job.cancel_requested_at is not None


def test_a_finished_job_cannot_be_cancelled(alice_api, queued_job):
    TrainingJob.objects.filter(pk=queued_job.pk).update(status="completed")
    response = alice_api.post(f"/api/v1/train/{queued_job.id}/cancel")
    assert response.status_code == 409
    assert "already completed" in response.json()["detail"]


def test_the_job_list_has_the_seed_shape(alice_api, queued_job):
    body = alice_api.get("/api/v1/jobs").json()
    assert body["total_jobs"] == 1
    [job] = body["jobs"]
    assert {"job_id", "status", "model_name", "created_at", "completed_at"} <= set(job)


def test_a_cancelled_job_result_lists_its_checkpoints(alice_api, queued_job):
    TrainingJob.objects.filter(pk=queued_job.pk).update(status="cancelled")
    Checkpoint.objects.create(job=queued_job, epoch=3, step=30, path="/x/ckpt_3.pt")
    body = alice_api.get(f"/api/v1/train/{queued_job.id}/result").json()
    assert body["checkpoints"] == ["/x/ckpt_3.pt"]
    assert body["ready_for_find_service"] is False and body["model_path"] is None
    assert alice_api.get(f"/api/v1/train/{queued_job.id}/status").json()["last_checkpoint"] == "/x/ckpt_3.pt"
