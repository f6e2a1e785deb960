"""A finished job's artifacts come down through GET /api/v1/train/{job_id}/download: a job trained
end to end gives a SAELens zip that unpacks and loads as its SAE, its weights and its metadata;
the archive is streamed in chunks; anyone but the owner and staff gets a 404; a job that has not
finished, an unknown artifact, and a file deleted since are clear 4xx answers."""
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from rest_framework.test import APIClient
from safetensors.torch import load_file

from engine.sae.export import save_sae, write_metadata
from engine.sae.export_saelens import export_saelens
from engine.sae import build_sae, sae_from_state_dict
from tests.training.worker.test_pipeline import make_job
from training import services
from training.artifacts import downloads
from training.models import TrainingJob
from training.worker.job import job_run


def url(job, artifact=None):
    return f"/api/v1/train/{job.id}/download" + (f"?artifact={artifact}" if artifact else "")


@pytest.fixture
def trained(alice, hub_models):
    job = make_job(alice, model_name="tiny/gpt2", layer_number=1, hidden_dim=48, max_epochs=2, min_loss=0,
                   learning_rate=1e-3, max_sequence_length=24, sae_batch_tokens=256)
    job = job_run(job.id)
    assert job.status == TrainingJob.Status.COMPLETED, job.message
    return job


def finished_job(owner, *, status=TrainingJob.Status.COMPLETED, **fields):
    """A job row whose artifacts the engine wrote where a run writes them, without a run: for the
    rules, which are about the row and the files, not the training."""
    job = TrainingJob.objects.create(owner=owner, model_name="tiny/gpt2", layer_number=1, status=status,
                                     message="Training completed", **fields)
    paths = services.job_artifact_paths(job)
    sae = build_sae("relu", 8, 16)
    save_sae(paths["model_path"], sae, scaling_factor=2.0)
    write_metadata(paths["metadata_path"], {"job_id": job.id, "layer_number": 1})
    export_saelens(paths["saelens_dir"], sae, 2.0, model_name="tiny/gpt2", hook_name="blocks.1.hook_resid_post",
                   context_size=24, feature_density=np.full(16, 0.1))
    TrainingJob.objects.filter(pk=job.pk).update(model_path=str(paths["model_path"]),
                                                 metadata_path=str(paths["metadata_path"]),
                                                 exports={"saelens": str(paths["saelens_dir"])})
    job.refresh_from_db()
    return job


def unpack(response, into: Path) -> Path:
    zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))).extractall(into)
    return into


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_saelens_download_of_a_trained_job_unpacks_and_loads_as_its_sae(trained, alice_api, tmp_path):
    response = alice_api.get(url(trained, "saelens"))
    assert response.status_code == 200
    assert response.streaming and not response.has_header("Content-Length")
    assert response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"] == f'attachment; filename="{trained.id}_saelens.zip"'

    folder = unpack(response, tmp_path / "unpacked") / f"{trained.id}_saelens"
    exported = Path(trained.exports["saelens"])
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae_weights.safetensors", "sparsity.safetensors"]
    for path in folder.iterdir():
        assert path.read_bytes() == (exported / path.name).read_bytes(), path.name
    cfg = json.loads((folder / "cfg.json").read_text())
    loaded = sae_from_state_dict(load_file(str(folder / "sae_weights.safetensors")),
                                 architecture=cfg["metadata"]["trained_architecture"])
    assert (loaded.d_in, loaded.d_sae) == (cfg["d_in"], cfg["d_sae"]) == (32, 48)
    saved = torch.load(trained.model_path, weights_only=True)
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, saved[name], rtol=0, atol=0, msg=name)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_weights_and_metadata_downloads_are_the_trained_jobs_files(trained, alice_api):
    weights = alice_api.get(url(trained, "weights"))
    assert weights.status_code == 200 and weights["Content-Type"] == "application/octet-stream"
    assert weights["Content-Disposition"] == f'attachment; filename="{trained.id}_sae.pt"'
    body = b"".join(weights.streaming_content)
    assert int(weights["Content-Length"]) == len(body) == Path(trained.model_path).stat().st_size
    state = torch.load(io.BytesIO(body), weights_only=True)
    sae = sae_from_state_dict(state, architecture=trained.architecture)
    assert sae.d_sae == 48
    for name, tensor in torch.load(trained.model_path, weights_only=True).items():
        assert torch.equal(state[name], tensor), name

    metadata = alice_api.get(url(trained, "metadata"))
    assert metadata.status_code == 200 and metadata["Content-Type"] == "application/json"
    assert metadata["Content-Disposition"] == f'attachment; filename="{trained.id}_metadata.json"'
    document = json.loads(b"".join(metadata.streaming_content))
    assert document["job_id"] == trained.id and document["layer_number"] == 1


def test_the_archive_goes_out_in_chunks_of_the_chunk_size(tmp_path, monkeypatch):
    sae = build_sae("relu", 64, 256)  # 2 x 64 x 256 float32 weights: about 130 KB
    folder = export_saelens(tmp_path / "sae", sae, 1.0, model_name="m", hook_name="h", context_size=8,
                            feature_density=np.full(256, 0.01))
    monkeypatch.setattr(downloads, "ARCHIVE_CHUNK_BYTES", 16 * 1024)
    archive = downloads.FolderArchive.open(folder, root="job_saelens")
    chunks = []
    for chunk in archive:  # an iterator: each chunk is made when it is asked for
        chunks.append(chunk)
    archive.close()
    weights_size = (folder / "sae_weights.safetensors").stat().st_size
    assert len(chunks) > weights_size // (16 * 1024)
    # A chunk is at most one read of a file plus an entry's header or the central directory.
    assert max(len(c) for c in chunks) <= 16 * 1024 + 1024
    with zipfile.ZipFile(io.BytesIO(b"".join(chunks))) as unpacked:
        assert unpacked.testzip() is None
        assert sorted(unpacked.namelist()) == [f"job_saelens/{p.name}" for p in sorted(folder.iterdir())]
        for path in folder.iterdir():
            assert unpacked.read(f"job_saelens/{path.name}") == path.read_bytes()


@pytest.mark.django_db
def test_without_an_artifact_the_download_is_the_saelens_zip(alice, alice_api):
    job = finished_job(alice)
    response = alice_api.get(url(job))
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    assert f"{job.id}_saelens.zip" in response["Content-Disposition"]
    b"".join(response.streaming_content)


@pytest.mark.django_db
def test_an_unknown_artifact_is_a_400_that_lists_the_valid_ones(alice, alice_api):
    job = finished_job(alice)
    for value in ("model", "", "../../../etc/passwd", "weights/../metadata"):
        response = alice_api.get(f"/api/v1/train/{job.id}/download", {"artifact": value})
        assert response.status_code == 400, value
        assert response.json()["detail"].startswith(f"artifact must be one of saelens, weights, metadata, not {value!r}")


@pytest.mark.django_db
def test_someone_elses_job_is_a_404_and_staff_may_download_it(alice, bob_api, charlie_api):
    job = finished_job(alice)
    for artifact in ("saelens", "weights", "metadata", "bogus"):
        response = bob_api.get(url(job, artifact))
        assert response.status_code == 404
        assert response.json() == {"detail": f"Job {job.id} not found"}
    response = charlie_api.get(url(job, "metadata"))
    assert response.status_code == 200
    assert json.loads(b"".join(response.streaming_content))["job_id"] == job.id


@pytest.mark.django_db
def test_a_download_needs_a_login(alice):
    job = finished_job(alice)
    response = APIClient().get(url(job, "weights"))
    assert response.status_code == 401
    assert "credentials were not provided" in response.json()["detail"].lower()


@pytest.mark.django_db
def test_a_session_login_downloads_too(client, alice):
    job = finished_job(alice)
    client.force_login(alice)
    response = client.get(url(job, "weights"))
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == Path(job.model_path).read_bytes()


@pytest.mark.django_db
def test_an_accept_header_for_the_file_type_gets_the_file_and_errors_stay_json(alice, alice_api):
    job = finished_job(alice)
    response = alice_api.get(url(job, "saelens"), HTTP_ACCEPT="application/zip")
    assert response.status_code == 200
    b"".join(response.streaming_content)
    response = alice_api.get(url(job, "nope"), HTTP_ACCEPT="application/zip")
    assert response.status_code == 400 and response["Content-Type"] == "application/json"


@pytest.mark.django_db
@pytest.mark.parametrize("status", [TrainingJob.Status.QUEUED, TrainingJob.Status.RUNNING])
def test_an_unfinished_job_is_a_409_that_says_to_poll(alice, alice_api, status):
    job = TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2", status=status, progress=0.4)
    response = alice_api.get(url(job, "weights"))
    assert response.status_code == 409
    assert response.json()["detail"] == (f"Job {job.id} is {status} (40% done); its weights can be downloaded once it "
                                         f"finishes. Poll /api/v1/train/{job.id}/status.")


@pytest.mark.django_db
def test_a_job_cancelled_before_its_sae_was_saved_has_nothing_to_download(alice, alice_api):
    job = TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2", status=TrainingJob.Status.CANCELLED,
                                     message="Cancelled at epoch 2; checkpoints kept")
    response = alice_api.get(url(job, "saelens"))
    assert response.status_code == 404
    assert response.json()["detail"] == (f"Job {job.id} (cancelled: Cancelled at epoch 2; checkpoints kept) made no "
                                         f"saelens; what it has to download: none.")


@pytest.mark.django_db
def test_a_job_cancelled_during_the_feature_analysis_downloads_its_saved_sae(alice, alice_api):
    job = finished_job(alice, status=TrainingJob.Status.CANCELLED)
    assert [a.name for a in downloads.available_artifacts(job)] == ["saelens", "weights", "metadata"]
    response = alice_api.get(url(job, "weights"))
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == Path(job.model_path).read_bytes()


@pytest.mark.django_db
def test_a_deleted_artifact_is_a_410_that_says_it_was_deleted(alice, alice_api):
    job = finished_job(alice)
    Path(job.model_path).unlink()
    Path(job.metadata_path).unlink()
    (Path(job.exports["saelens"]) / "sae_weights.safetensors").unlink()
    for artifact, name in (("weights", Path(job.model_path).name), ("metadata", Path(job.metadata_path).name)):
        response = alice_api.get(url(job, artifact))
        assert response.status_code == 410, artifact
        assert response.json()["detail"] == (f"Job {job.id}'s {artifact} ({name}) is no longer on disk: it was deleted "
                                             f"after the job finished. Train a new job with its parameters to get another.")
    response = alice_api.get(url(job, "saelens"))
    assert response.status_code == 410
    assert "whole (missing sae_weights.safetensors)" in response.json()["detail"]
    shutil.rmtree(job.exports["saelens"])
    response = alice_api.get(url(job, "saelens"))
    assert response.status_code == 410
    assert response.json()["detail"].startswith(f"Job {job.id}'s saelens ({job.id}_saelens) is no longer on disk: ")
    assert downloads.available_artifacts(job) == []


@pytest.mark.django_db
def test_a_file_deleted_after_the_download_began_still_arrives_whole(alice, alice_api):
    job = finished_job(alice)
    expected = {p.name: p.read_bytes() for p in Path(job.exports["saelens"]).iterdir()}
    response = alice_api.get(url(job, "saelens"))
    shutil.rmtree(job.exports["saelens"])  # the files are open already; none of them is read yet
    with zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))) as unpacked:
        assert {Path(n).name: unpacked.read(n) for n in unpacked.namelist()} == expected


@pytest.mark.django_db
def test_the_job_page_links_only_what_can_be_downloaded(client, alice):
    job = finished_job(alice)
    Path(job.metadata_path).unlink()
    client.force_login(alice)
    page = client.get(f"/jobs/{job.id}/").content.decode()
    for artifact in ("saelens", "weights"):
        assert f'href="/api/v1/train/{job.id}/download?artifact={artifact}"' in page
    assert "artifact=metadata" not in page
    queued = TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2")
    page = client.get(f"/jobs/{queued.id}/").content.decode()
    assert 'id="downloads"' not in page and "/download?" not in page
