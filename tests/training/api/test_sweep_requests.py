"""POST /api/v1/sweeps: every member checked up front, one job per layer x hook point x member,
one queued task for the whole sweep, and clear 400s for what a sweep cannot do."""
import pytest

from tests.django_fixtures import queued_tasks
from tests.model_fixtures import SAMPLE_CORPUS
from training.models import Sweep, TrainingJob

pytestmark = pytest.mark.django_db


@pytest.fixture
def corpus(upload):
    assert upload(SAMPLE_CORPUS.name, SAMPLE_CORPUS.read_bytes()).status_code == 200
    return SAMPLE_CORPUS.name


def body(**fields):
    return {"model_name": "tiny/llama", "corpus_file": SAMPLE_CORPUS.name, "max_sequence_length": 32,
            "layers": [0, 1], "hook_points": ["resid_post", "mlp_out"], "architecture": "topk", "k": 4,
            "hidden_dim": 64, "members": [{}, {"k": 8, "learning_rate": 3e-4}, {"architecture": "jumprelu", "k": None,
                                                                                  "target_l0": 6}], **fields}


@pytest.mark.slow
def test_a_sweep_makes_one_job_per_layer_hook_point_and_member_and_queues_one_task(alice_api, hub_models, corpus,
                                                                                django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_api.post("/api/v1/sweeps", body(), format="json")
    assert response.status_code == 201, response.json()
    created = response.json()
    assert len(created["job_ids"]) == 2 * 2 * 3 and created["status"] == "queued"
    sweep = Sweep.objects.get(pk=created["sweep_id"])
    jobs = list(sweep.jobs.order_by("created_at", "pk"))
    assert [job.id for job in jobs] == created["job_ids"]
    assert [(j.layer_number, j.hook_point) for j in jobs[:3]] == [(0, "resid_post")] * 3
    assert [(j.architecture, j.k, j.target_l0, j.learning_rate) for j in jobs[:3]] == [
        ("topk", 4, None, jobs[0].learning_rate), ("topk", 8, None, 3e-4), ("jumprelu", None, 6.0, jobs[0].learning_rate)]
    assert {job.cache_activations for job in jobs} == {"always"} and all(job.disk_plan["cache"] for job in jobs)
    assert sweep.disk_plan["sites"] == 4 and sweep.disk_plan["needed_bytes"] > 4 * sweep.disk_plan["cache_bytes_per_site"]
    assert [task["func"] for task in queued_tasks()] == ["training.tasks.run_sweep"]
    assert queued_tasks()[0]["args"] == (sweep.id,)

    document = alice_api.get(f"/api/v1/sweeps/{sweep.id}").json()
    assert document["status"] == "queued" and document["members_count"] == 12
    assert document["lm_forward_batches"] is None and document["members_by_status"] == {"queued": 12}
    assert document["members"][1]["settings"] == {"k": 8, "learning_rate": 3e-4}
    # Each member is a job like any other: the seed's endpoints answer for it.
    assert alice_api.get(f"/api/v1/train/{jobs[0].id}/status").json()["status"] == "queued"


def test_a_member_that_sets_a_shared_field_is_refused_by_name(alice_api, hub_models, corpus):
    response = alice_api.post("/api/v1/sweeps", body(members=[{}, {"batch_size": 4}]), format="json")
    assert response.status_code == 400
    assert response.json()["detail"].startswith("members[1].batch_size: cannot differ between members")
    response = alice_api.post("/api/v1/sweeps", body(members=[{"k": 0}]), format="json")
    assert response.status_code == 400 and "members[0].k" in response.json()["detail"]
    assert not Sweep.objects.exists() and not TrainingJob.objects.exists()


def test_every_member_is_checked_against_the_model_before_anything_is_saved(alice_api, hub_models, corpus):
    response = alice_api.post("/api/v1/sweeps", body(layers=[1, 7]), format="json")
    assert response.status_code == 400
    assert response.json()["detail"].startswith("members[0] at layer 7, resid_post: layer_number 7 is out of range")
    response = alice_api.post("/api/v1/sweeps", body(members=[{"architecture": "topk", "k": 500}]), format="json")
    assert response.status_code == 400 and "members[0]" in response.json()["detail"]
    assert not Sweep.objects.exists() and not TrainingJob.objects.exists()


@pytest.mark.parametrize("fields, says", [
    ({"gpu_ids": [0, 1]}, "gpu_ids: a sweep trains on one device"),
    ({"layers": [1, 1]}, "layers: [1, 1] names one more than once"),
    ({"layers": []}, "layers: Ensure this field has at least 1 elements"),
    ({"members": [{}] * 40}, "more than MISTUDIO_SWEEP_MAX_MEMBERS (64)"),
])
@pytest.mark.slow
def test_what_a_sweep_cannot_do_is_a_400_that_says_what_to_change(alice_api, hub_models, corpus, fields, says):
    response = alice_api.post("/api/v1/sweeps", body(**fields), format="json")
    assert response.status_code == 400 and says in response.json()["detail"], response.json()


def test_a_sweep_that_cannot_fit_the_disk_is_refused_with_its_sizes(alice_api, hub_models, corpus, settings):
    settings.DISK_BUDGET_BYTES = 2_000_000
    response = alice_api.post("/api/v1/sweeps", body(cache_activations="always"), format="json")
    assert response.status_code == 400
    assert "The sweep needs" in response.json()["detail"] and "4 site caches" in response.json()["detail"]


def test_other_users_get_404_for_a_sweep_and_staff_see_it(alice_api, bob_api, charlie_api, hub_models, corpus):
    sweep_id = alice_api.post("/api/v1/sweeps", body(members=[{}]), format="json").json()["sweep_id"]
    for client, code in ((bob_api, 404), (charlie_api, 200), (alice_api, 200)):
        assert client.get(f"/api/v1/sweeps/{sweep_id}").status_code == code
    assert bob_api.post(f"/api/v1/sweeps/{sweep_id}/cancel").status_code == 404
    assert bob_api.get(f"/api/v1/sweeps/{sweep_id}").json() == {"detail": f"Sweep {sweep_id} not found"}
    assert bob_api.get("/api/v1/sweeps").json()["total_sweeps"] == 0
    assert alice_api.get("/api/v1/sweeps").json()["total_sweeps"] == 1


def test_cancelling_a_queued_sweep_cancels_every_member_at_once(alice_api, hub_models, corpus):
    sweep_id = alice_api.post("/api/v1/sweeps", body(), format="json").json()["sweep_id"]
    document = alice_api.post(f"/api/v1/sweeps/{sweep_id}/cancel").json()
    assert document["status"] == "cancelled" and document["members_by_status"] == {"cancelled": 12}
    response = alice_api.post(f"/api/v1/sweeps/{sweep_id}/cancel")
    assert response.status_code == 409 and "has ended" in response.json()["detail"]


def test_staff_see_a_sweep_and_its_members_in_the_admin_and_cancel_it_there(alice_api, hub_models, corpus, client,
                                                                          charlie):
    sweep_id = alice_api.post("/api/v1/sweeps", body(members=[{}, {"k": 8}]), format="json").json()["sweep_id"]
    client.force_login(charlie)
    from django.contrib.admin.utils import quote
    from django.urls import reverse

    response = client.get(reverse("admin:training_sweep_change", args=[quote(sweep_id)]))
    page = response.content.decode()
    assert response.status_code == 200, [str(m) for m in response.wsgi_request._messages]
    assert all(job.id in page for job in Sweep.objects.get(pk=sweep_id).jobs.all())
    client.post("/admin/training/sweep/", {"action": "cancel_sweeps", "_selected_action": [sweep_id]})
    assert set(TrainingJob.objects.filter(sweep_id=sweep_id).values_list("status", flat=True)) == {"cancelled"}
