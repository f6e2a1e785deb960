"""A sweep whose caches would not fit the disk is accepted and streams: no site file, one forward
per batch feeds every member, each member's result says its activations streamed and why, and a
member equals the same job streamed alone. `cache_activations: never` is accepted for a sweep."""
import pytest
import torch

from tests.model_fixtures import SAMPLE_CORPUS
from training import services, sweeps
from training.models import Sweep, TrainingJob
from training.worker.job import job_run
from training.worker.sweep import site_path, sweep_run

pytestmark = pytest.mark.django_db(transaction=True)

BODY = {"model_name": "tiny/llama", "corpus_file": SAMPLE_CORPUS.name, "max_sequence_length": 32, "batch_size": 8,
        "hidden_dim": 64, "max_epochs": 1, "min_loss": 0.0, "sae_batch_tokens": 256, "architecture": "topk", "k": 4,
        "learning_rate": 1e-3, "layers": [0, 1], "members": [{}, {"k": 8}]}


@pytest.fixture
def corpus(upload):
    assert upload(SAMPLE_CORPUS.name, SAMPLE_CORPUS.read_bytes()).status_code == 200


def caching_sizes(alice_api, **fields) -> dict:
    """The disk plan the sweep has when it caches (made, read, then removed)."""
    response = alice_api.post("/api/v1/sweeps", {**BODY, **fields}, format="json")
    assert response.status_code == 201, response.json()
    sweep = Sweep.objects.get(pk=response.json()["sweep_id"])
    plan = sweep.disk_plan
    assert plan["streams"] is False and plan["cache_bytes_per_site"] > 0
    sweep.jobs.all().delete()
    sweep.delete()
    return plan


@pytest.mark.slow
def test_a_sweep_whose_caches_exceed_the_disk_budget_is_accepted_and_streams(alice, alice_api, hub_models, corpus,
                                                                           settings):
    plan = caching_sizes(alice_api)
    # Room for the checkpoints and one site's cache, not for both sites'.
    settings.DISK_BUDGET_BYTES = plan["checkpoint_bytes"] + plan["cache_bytes_per_site"]
    response = alice_api.post("/api/v1/sweeps", BODY, format="json")
    assert response.status_code == 201, response.json()
    sweep = Sweep.objects.get(pk=response.json()["sweep_id"])
    assert sweep.disk_plan["streams"] is True and "would not fit" in sweep.disk_plan["reason"]
    assert sweep.disk_plan["needed_bytes"] == sweep.disk_plan["checkpoint_bytes"]
    jobs = list(sweep.jobs.order_by("created_at", "pk"))
    assert {job.cache_activations for job in jobs} == {"auto"} and not any(job.disk_plan["cache"] for job in jobs)
    assert all("streaming sweep" in job.disk_plan["reason"] for job in jobs)

    ended = []
    sweep = sweep_run(sweep.id, on_member_end=lambda job: ended.append(job.status))
    assert ended == ["completed"] * 4
    document = sweeps.sweep_document(sweep)
    assert document["status"] == "completed" and document["activations"] == "streamed"
    assert document["lm_forward_batches"] > 0 and document["tokens_extracted"] > 0
    for job in sweep.jobs.all():
        assert not site_path(sweep.id, job.layer_number, job.hook_point).exists() and not job.activations_path
        stats = job.training_stats
        assert stats["activations_cached"] is False and "would not fit" in stats["cache_decision"], stats
        assert job.evaluation["explained_variance"] is not None and job.features_dir

    # A member equals the same job streamed alone, with the same seed.
    member = sweep.jobs.order_by("created_at", "pk")[3]
    settings.DISK_BUDGET_BYTES = None
    single = services.job_create(owner=alice, enqueue=False, request=services.JobRequest(**{
        **{k: v for k, v in BODY.items() if k not in ("layers", "members")}, "layer_number": member.layer_number,
        "k": member.k, "cache_activations": "never"}))
    single = job_run(single.id)
    assert single.status == "completed", single.message
    assert single.training_stats["activations_cached"] is False
    ours, theirs = torch.load(member.model_path), torch.load(single.model_path)
    for name in theirs:
        assert torch.allclose(ours[name], theirs[name], atol=1e-5), name


def test_cache_activations_never_is_accepted_for_a_sweep_and_streams(alice_api, hub_models, corpus):
    response = alice_api.post("/api/v1/sweeps", {**BODY, "cache_activations": "never"}, format="json")
    assert response.status_code == 201, response.json()
    sweep = Sweep.objects.get(pk=response.json()["sweep_id"])
    assert sweep.disk_plan["streams"] is True and "cache_activations is never" in sweep.disk_plan["reason"]
    assert {job.cache_activations for job in sweep.jobs.all()} == {"never"}
    assert alice_api.get(f"/api/v1/sweeps/{sweep.id}").json()["activations"] == "streamed"


def test_a_sweep_that_must_cache_and_cannot_fit_is_refused_with_what_to_change(alice_api, hub_models, corpus,
                                                                             settings):
    plan = caching_sizes(alice_api)
    settings.DISK_BUDGET_BYTES = plan["checkpoint_bytes"] + plan["cache_bytes_per_site"]
    response = alice_api.post("/api/v1/sweeps", {**BODY, "cache_activations": "always"}, format="json")
    assert response.status_code == 400
    assert "2 site caches" in response.json()["detail"] and "auto or never" in response.json()["detail"]
    assert not TrainingJob.objects.exists()


def test_a_streaming_sweep_is_checked_for_every_member_training_at_once(alice_api, hub_models, corpus, settings,
                                                                        monkeypatch):
    from training.admission import model as modelcheck

    settings.EVAL_LOGITS_BYTES = 1024  # the evaluation's logits far below the SAEs' training
    described = modelcheck.describe("tiny/llama", token=None)
    sizes = dict(device_kind="cpu", quantization=None, hidden_dim=BODY["hidden_dim"], batch_size=BODY["batch_size"],
                 max_sequence_length=BODY["max_sequence_length"], sae_batch_tokens=BODY["sae_batch_tokens"],
                 layer_number=1)
    one = modelcheck.estimate(described, **sizes)
    # Room for the model and two SAEs training (one member alone fits), not for the sweep's four.
    room = one.weights_bytes + one.forward_bytes + max(2 * one.sae_bytes, one.evaluation_bytes) + 1
    assert 4 * one.sae_bytes > room - one.weights_bytes - one.forward_bytes
    monkeypatch.setattr(modelcheck, "system_memory", lambda: (room, room))
    monkeypatch.setattr(modelcheck, "gpu_inventory", lambda: type("Inventory", (), {"gpus": []})())
    response = alice_api.post("/api/v1/sweeps", {**BODY, "cache_activations": "never"}, format="json")
    assert response.status_code == 400
    assert response.json()["detail"].startswith("The sweep streams, so its 4 members train at once")
    # Cached, they train one after another: each fits.
    response = alice_api.post("/api/v1/sweeps", {**BODY, "cache_activations": "always"}, format="json")
    assert response.status_code == 201, response.json()


class Killed(BaseException):
    """The worker dying mid-run: nothing after it runs, no row is ended."""


@pytest.mark.slow
def test_a_streaming_sweep_whose_worker_died_resumes_each_member_from_its_checkpoint(alice, alice_api, hub_models,
                                                                                   corpus, settings, dead_pid):
    from training import recovery

    settings.CHECKPOINT_EVERY_EPOCHS, settings.PROGRESS_INTERVAL_S = 1, 0.0
    two_passes = {**BODY, "layers": [1], "max_epochs": 2, "cache_activations": "never"}
    response = alice_api.post("/api/v1/sweeps", two_passes, format="json")
    assert response.status_code == 201, response.json()
    sweep = Sweep.objects.get(pk=response.json()["sweep_id"])

    def die_in_the_second_pass(update):
        if update.get("phase") == "training" and update.get("epoch") == 2:
            raise Killed

    with pytest.raises(Killed):
        sweep_run(sweep.id, on_progress=die_in_the_second_pass)
    jobs = list(sweep.jobs.order_by("created_at", "pk"))
    assert all(job.checkpoints.exists() for job in jobs)
    TrainingJob.objects.filter(sweep=sweep).update(worker_pid=dead_pid)
    assert sorted(recovery.jobs_recover_stale()) == sorted(job.id for job in jobs)

    messages, reports = [], []
    sweep = sweep_run(sweep.id, on_progress=reports.append, on_member_end=lambda job: messages.append(job.status))
    assert messages == ["completed", "completed"]
    # Both took up the second pass where their checkpoints left them: the first was not trained again.
    assert {update["epoch"] for update in reports if update.get("phase") == "training"} == {2}
    for job in sweep.jobs.all():
        assert job.training_stats["activations_cached"] is False and job.training_stats["total_epochs"] == 2, \
            job.training_stats
        assert [run["ended"] for run in job.runs][0] == "worker lost"

    # Each as the same job run once without a death.
    member = sweep.jobs.order_by("created_at", "pk")[1]
    single = services.job_create(owner=alice, enqueue=False, request=services.JobRequest(**{
        **{k: v for k, v in two_passes.items() if k not in ("layers", "members")}, "layer_number": 1, "k": member.k}))
    single = job_run(single.id)
    assert single.status == "completed", single.message
    ours, theirs = torch.load(member.model_path), torch.load(single.model_path)
    for name in theirs:
        assert torch.allclose(ours[name], theirs[name], atol=1e-5), name
