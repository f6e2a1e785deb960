"""MISTUDIO_STORAGE_QUOTA_BYTES: a user's corpora and their jobs' files on disk together. An upload
that would pass it is a 413 naming the quota and the use, refused while it streams in, with nothing
stored; a job whose planned disk would pass it is a 400. Staff are exempt. Whoever uploads, a file
that would leave less than MISTUDIO_DISK_RESERVE_BYTES free on the data folder's disk is a 413."""
import pytest

from corpora.models import Corpus
from corpora.quotas import storage_used_bytes
from corpora.services import corpus_add_from_path
from engine import disk
from training.models import TrainingJob

pytestmark = pytest.mark.django_db

KB = 1000


def stored_files(data_dir):
    folder = data_dir / "samples"
    return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []


def test_an_upload_past_the_quota_is_a_413_naming_the_quota_and_the_use(upload, settings, data_dir):
    settings.STORAGE_QUOTA_BYTES = 10 * KB
    assert upload("first.txt", b"some text\n" * 600).status_code == 200  # 6 kB
    response = upload("second.txt", b"more text\n" * 500)  # 5 kB
    assert response.status_code == 413
    detail = response.json()["detail"]
    assert "you use 6.0 kB of 10.0 kB (MISTUDIO_STORAGE_QUOTA_BYTES" in detail
    assert "delete corpora or old jobs' artifacts" in detail
    assert list(Corpus.objects.values_list("name", flat=True)) == ["first.txt"]
    assert len(stored_files(data_dir)) == 1
    assert upload("third.txt", b"fits\n" * 800).status_code == 200  # 4 kB: exactly what is left


def test_the_quota_counts_the_files_of_the_users_jobs(alice, upload, settings, data_dir):
    settings.STORAGE_QUOTA_BYTES = 10 * KB
    job = TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2")
    (data_dir / "models").mkdir()
    (data_dir / "models" / f"{job.id}_sae.pt").write_bytes(b"w" * 3000)
    (data_dir / "models" / f"{job.id}_saelens").mkdir()
    (data_dir / "models" / f"{job.id}_saelens" / "sae_weights.safetensors").write_bytes(b"w" * 2000)
    (data_dir / "models" / "train_20000101_000000_0000_sae.pt").write_bytes(b"w" * 9000)  # no job of hers
    assert storage_used_bytes(alice) == 5000
    response = upload("a.txt", b"text text\n" * 600)
    assert response.status_code == 413 and "you use 5.0 kB of 10.0 kB" in response.json()["detail"]


@pytest.mark.slow
def test_a_job_whose_plan_would_pass_the_quota_is_a_400(upload, alice_api, hub_models, settings, sample_corpus_bytes):
    assert upload("reviews.txt", sample_corpus_bytes).status_code == 200
    settings.STORAGE_QUOTA_BYTES = len(sample_corpus_bytes) + 1000
    response = alice_api.post("/api/v1/train", {"model_name": "tiny/gpt2", "corpus_file": "reviews.txt",
                                                "layer_number": 1, "hidden_dim": 16, "max_epochs": 5}, format="json")
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert detail.startswith("This job plans to write ") and "more than your storage quota leaves" in detail
    assert "MISTUDIO_STORAGE_QUOTA_BYTES" in detail and "lower hidden_dim" in detail
    assert not TrainingJob.objects.exists()
    settings.STORAGE_QUOTA_BYTES = 100 * 1000**2
    assert alice_api.post("/api/v1/train", {"model_name": "tiny/gpt2", "corpus_file": "reviews.txt", "layer_number": 1,
                                            "hidden_dim": 16, "max_epochs": 5}, format="json").status_code == 200


def test_staff_are_exempt_from_the_quota(upload, charlie_api, settings):
    settings.STORAGE_QUOTA_BYTES = 1 * KB
    assert upload("big.txt", b"some text\n" * 600, client=charlie_api).status_code == 200


def test_an_upload_that_would_eat_into_the_disk_reserve_is_a_413_for_staff_too(upload, charlie_api, settings,
                                                                               monkeypatch, data_dir):
    monkeypatch.setattr(disk, "free_bytes", lambda folder: 1_000_000 + 5 * KB)
    settings.DISK_RESERVE_BYTES = 1_000_000
    response = upload("big.txt", b"some text\n" * 600, client=charlie_api)
    assert response.status_code == 413
    assert "1.0 MB free, of which 1.0 MB is kept in reserve (MISTUDIO_DISK_RESERVE_BYTES)" in response.json()["detail"]
    assert not Corpus.objects.exists() and stored_files(data_dir) == []
    assert upload("small.txt", b"some text\n" * 400, client=charlie_api).status_code == 200


def test_the_terminal_and_admin_path_refuses_too(alice, settings, tmp_path):
    settings.STORAGE_QUOTA_BYTES = 1 * KB
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"some text\n" * 600)
    from corpora.quotas import StorageFull

    with pytest.raises(StorageFull, match=r"'corpus.txt' is larger than what your storage quota leaves"):
        corpus_add_from_path(owner=alice, path=path)
    assert not Corpus.objects.exists()


def test_a_multipart_body_sent_anonymously_is_held_to_the_other_limits_not_a_500(client, settings):
    from django.core.files.uploadedfile import SimpleUploadedFile

    settings.STORAGE_QUOTA_BYTES = 1 * KB
    response = client.post("/accounts/login/", {"username": "x", "password": "y", "file": SimpleUploadedFile("a.txt", b"hi\n")})
    assert response.status_code in (200, 403)
    response = client.post("/api/v1/upload", {"file": SimpleUploadedFile("a.txt", b"hi\n")})
    assert response.status_code == 401
