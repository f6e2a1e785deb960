"""A hub model's weights are checked before a byte of them is downloaded: the repository's file
sizes at the job's commit are asked first, a download past MISTUDIO_MODEL_MAX_BYTES is a 400 naming
the files, sizes and the setting (a job, a sweep), and what is to download counts in the disk plan
and in the owner's storage; a model the hub cache already holds counts for nothing. The worker asks
again right before it loads, and fails the job rather than fill the disk.

The fake hub reports the sizes a test gives (a 30 GB shard) while serving a tiny model's bytes."""
import json

from huggingface_hub import hf_hub_download
import pytest

from tests.fake_hub import fake_hub  # noqa: F401 - the fixture
from training import services
from training.models import Sweep, TrainingJob
from training.worker.job import job_run

pytestmark = pytest.mark.django_db(transaction=True)

GB, MB = 10**9, 10**6


@pytest.fixture
def corpus(upload, sample_corpus_bytes):
    assert upload("reviews.txt", sample_corpus_bytes).status_code == 200


@pytest.fixture
def tiny_files(tiny_gpt2_dir):
    return {p.name: p.read_bytes() for p in tiny_gpt2_dir.iterdir() if p.is_file()}


def sharded(files: dict) -> dict:
    """The tiny model's files with its weights named as three shards by an index (the shards' bytes
    are the one file's: only their reported sizes matter before a download)."""
    files = {name: content for name, content in files.items() if name != "model.safetensors"}
    shards = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = {"metadata": {}, "weight_map": {f"h.{i}.weight": shard for i, shard in enumerate(shards)}}
    return {**files, "model.safetensors.index.json": json.dumps(index), **{shard: b"shard" for shard in shards}}


def body(**fields):
    return {"model_name": "org/tiny-gpt2", "corpus_file": "reviews.txt", "layer_number": 1, "hidden_dim": 32,
            "max_epochs": 1, "max_sequence_length": 16, **fields}


def weights_asked_for(hub) -> list:
    """Weight files downloaded: whole GETs. A HEAD asks whether a file is there, and a ranged GET
    reads a safetensors header (the parameter count, engine.models.parameter_count), not the weights."""
    return [r.path for r in hub.requests if "/resolve/" in r.path and r.path.endswith((".safetensors", ".bin"))
            and r.method == "GET" and not r.range]


@pytest.mark.slow
def test_a_model_past_the_limit_is_a_400_naming_the_file_its_size_and_the_setting(alice_api, corpus, fake_hub,
                                                                                   tiny_files):
    fake_hub.push("org/tiny-gpt2", tiny_files, reported_sizes={"model.safetensors": 30 * GB})
    response = alice_api.post("/api/v1/train", body(), format="json")
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "model.safetensors (30.0 GB)" in detail and "MISTUDIO_MODEL_MAX_BYTES" in detail
    assert f"{30 * GB:,} bytes" in detail and response.json()["errors"] == {"model_name": [detail]}
    assert not TrainingJob.objects.exists()
    assert weights_asked_for(fake_hub) == []
    # The web process is still up and answers the next request.
    assert alice_api.get("/health").status_code == 200


@pytest.mark.slow
def test_a_sharded_models_shards_are_counted_together(alice_api, corpus, fake_hub, tiny_files):
    files = sharded(tiny_files)
    shards = sorted(name for name in files if name.startswith("model-0000"))
    fake_hub.push("org/tiny-gpt2", files, reported_sizes={shard: 8 * GB for shard in shards})
    response = alice_api.post("/api/v1/train", body(), format="json")
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "are 24.0 GB to download" in detail  # each shard is under the limit, the three are not
    assert all(f"{shard} (8.0 GB)" in detail for shard in shards)
    assert weights_asked_for(fake_hub) == []


@pytest.mark.slow
def test_the_job_and_its_sweep_are_refused_alike(alice, corpus, fake_hub, tiny_files, settings):
    fake_hub.push("org/tiny-gpt2", tiny_files)
    settings.MODEL_MAX_BYTES = len(tiny_files["model.safetensors"]) - 1
    from training.requests import SweepRequest
    from training.sweeps import sweep_create

    base = services.JobRequest(model_name="org/tiny-gpt2", corpus_file="reviews.txt", layer_number=1, hidden_dim=32,
                               max_epochs=1, min_loss=0, max_sequence_length=16)
    with pytest.raises(services.ServiceError, match="MISTUDIO_MODEL_MAX_BYTES"):
        services.job_create(owner=alice, request=base, enqueue=False)
    with pytest.raises(services.ServiceError, match="MISTUDIO_MODEL_MAX_BYTES"):
        sweep_create(owner=alice, request=SweepRequest(base=base, layers=[0, 1], hook_points=["resid_post"],
                                                       members=[{}]), enqueue=False)
    assert not TrainingJob.objects.exists() and not Sweep.objects.exists()


@pytest.mark.slow
def test_the_disk_plan_lists_and_counts_the_download(alice_api, corpus, fake_hub, tiny_files, settings):
    files = sharded(tiny_files)
    shards = sorted(name for name in files if name.startswith("model-0000"))
    fake_hub.push("org/tiny-gpt2", files, reported_sizes={shard: 40 * MB for shard in shards})
    response = alice_api.post("/api/v1/train", body(), format="json")
    assert response.status_code == 200, response.json()
    plan = TrainingJob.objects.get().disk_plan
    assert plan["download_bytes"] == 120 * MB
    assert plan["download_files"] == {shard: 40 * MB for shard in shards}
    assert plan["needed_bytes"] == plan["download_bytes"] + plan["checkpoint_bytes"] + plan["cache_bytes"]
    # The index was read (a few hundred bytes) to learn the shards: it is in the hub cache now.
    assert plan["weights_cached_bytes"] == len(files["model.safetensors.index.json"])

    # With the room the run's own files need, but not the weights beside them, it is refused.
    settings.DISK_BUDGET_BYTES = 2 * plan["checkpoint_bytes"] + 60 * MB
    TrainingJob.objects.all().delete()
    response = alice_api.post("/api/v1/train", body(), format="json")
    assert response.status_code == 400
    assert "the model's weights to download, 120.0 MB" in response.json()["detail"]
    assert "choose a smaller model" in response.json()["detail"]


@pytest.mark.slow
def test_the_owners_storage_counts_what_their_job_will_download(alice_api, corpus, fake_hub, tiny_files, settings,
                                                                 sample_corpus_bytes):
    fake_hub.push("org/tiny-gpt2", tiny_files, reported_sizes={"model.safetensors": 50 * MB})
    settings.STORAGE_QUOTA_BYTES = len(sample_corpus_bytes) + 40 * MB  # the run's own files fit
    response = alice_api.post("/api/v1/train", body(), format="json")
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "(the model's weights to download, 50.0 MB, included)" in detail
    assert "more than your storage quota leaves" in detail
    settings.STORAGE_QUOTA_BYTES = len(sample_corpus_bytes) + 60 * MB
    assert alice_api.post("/api/v1/train", body(), format="json").status_code == 200
    # The queued job's download is still hers until it runs: a second one does not fit beside it.
    assert "your queued jobs plan to write 5" in alice_api.post("/api/v1/train", body(), format="json").json()["detail"]


@pytest.mark.slow
def test_a_model_the_hub_cache_holds_is_not_counted(alice_api, corpus, fake_hub, tiny_files):
    commit = fake_hub.push("org/tiny-gpt2", tiny_files, reported_sizes={"model.safetensors": 30 * GB})
    for name in tiny_files:  # what an earlier job downloaded
        hf_hub_download("org/tiny-gpt2", name, revision=commit)
    response = alice_api.post("/api/v1/train", body(), format="json")
    assert response.status_code == 200, response.json()
    plan = TrainingJob.objects.get().disk_plan
    assert plan["download_bytes"] == 0 and plan["download_files"] == {}
    assert plan["weights_cached_bytes"] == len(tiny_files["model.safetensors"])


@pytest.mark.slow
@pytest.mark.parametrize("setting,value,expected", [
    ("MODEL_MAX_BYTES", 1000, "MISTUDIO_MODEL_MAX_BYTES"),
    ("DISK_RESERVE_BYTES", 10**18, "MISTUDIO_DISK_RESERVE_BYTES"),  # the disk filled since the job was made
])
@pytest.mark.slow
def test_the_worker_checks_again_before_it_downloads(alice, corpus, fake_hub, tiny_files, settings, setting, value,
                                                     expected):
    fake_hub.push("org/tiny-gpt2", tiny_files)
    job = services.job_create(owner=alice, enqueue=False, request=services.JobRequest(
        model_name="org/tiny-gpt2", corpus_file="reviews.txt", layer_number=1, hidden_dim=32, max_epochs=1,
        min_loss=0, max_sequence_length=16))
    setattr(settings, setting, value)
    job = job_run(job.id)
    assert job.status == TrainingJob.Status.FAILED
    assert "The weights of 'org/tiny-gpt2'" in job.message and expected in job.message
    assert weights_asked_for(fake_hub) == []


@pytest.mark.slow
def test_a_hub_cache_on_another_disk_is_not_counted_in_the_data_folders_but_in_the_owners_storage(
        alice_api, corpus, fake_hub, tiny_files, settings, sample_corpus_bytes, monkeypatch):
    from engine import disk

    monkeypatch.setattr(disk, "same_file_system", lambda a, b: False)
    fake_hub.push("org/tiny-gpt2", tiny_files, reported_sizes={"model.safetensors": 50 * MB})
    settings.DISK_BUDGET_BYTES = 20 * MB  # the data folder: room for the run's files, not the weights
    response = alice_api.post("/api/v1/train", body(), format="json")
    assert response.status_code == 200, response.json()
    plan = TrainingJob.objects.get().disk_plan
    assert plan["download_bytes"] == 50 * MB and plan["download_free_bytes"] is not None
    assert plan["needed_bytes"] == plan["checkpoint_bytes"] + plan["cache_bytes"]
    settings.STORAGE_QUOTA_BYTES = len(sample_corpus_bytes) + 2 * plan["needed_bytes"] + 60 * MB
    response = alice_api.post("/api/v1/train", body(), format="json")  # beside the first, still queued
    assert response.status_code == 400 and "50.0 MB, included" in response.json()["detail"]


@pytest.mark.slow
def test_the_new_job_form_shows_the_refusal_next_to_the_model(alice, corpus, fake_hub, tiny_files):
    from django.test import Client

    fake_hub.push("org/tiny-gpt2", tiny_files, reported_sizes={"model.safetensors": 30 * GB})
    browser = Client()
    browser.force_login(alice)
    fields = {name: str(value) for name, value in body().items()}
    response = browser.post("/jobs/new/", {**fields, "exclude_special_tokens": "true", "prepend_bos": "true"})
    assert response.status_code == 400
    shown = {row.name: row for _, section in response.context["sections"] for row in section}
    assert any("MISTUDIO_MODEL_MAX_BYTES" in error for error in shown["model_name"].errors)
    assert not TrainingJob.objects.exists()
