"""Retention: `manage.py purge_artifacts --older-than-days N [--dry-run]` (N defaults to
MISTUDIO_RETENTION_DAYS) deletes the files of jobs that ended more than N days ago, real files in
the test's data folder; the rows stay, marked, and their downloads and features answer 410 saying
retention removed them, their status and page say when. A dry run deletes nothing. A sweep's
site caches go once every member's files have gone."""
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from training import services
from training.models import Checkpoint, Sweep, TrainingJob

pytestmark = pytest.mark.django_db


def finished_job(owner, *, days_ago, status=TrainingJob.Status.COMPLETED, sweep=None):
    """A job that ended `days_ago` days ago, with the files a run writes, named as it names them."""
    job = TrainingJob.objects.create(owner=owner, model_name="tiny/gpt2", sweep=sweep)
    paths = services.job_artifact_paths(job)
    paths["model_path"].write_bytes(b"w" * 1000)
    paths["metadata_path"].write_text("{}")
    paths["activations_path"].write_bytes(b"a" * 5000)
    paths["saelens_dir"].mkdir()
    (paths["saelens_dir"] / "cfg.json").write_text("{}")
    (paths["saelens_dir"] / "sae_weights.safetensors").write_bytes(b"s" * 1000)
    paths["features_dir"].mkdir()
    (paths["features_dir"] / "tokens.json").write_text("{}")
    checkpoint = paths["checkpoint_dir"] / f"{job.id}_checkpoint_2.pt"
    checkpoint.write_bytes(b"c" * 2000)
    Checkpoint.objects.create(job=job, epoch=2, step=10, path=str(checkpoint))
    TrainingJob.objects.filter(pk=job.pk).update(
        status=status, completed_at=timezone.now() - timedelta(days=days_ago), model_path=str(paths["model_path"]),
        metadata_path=str(paths["metadata_path"]), activations_path=str(paths["activations_path"]),
        features_dir=str(paths["features_dir"]), exports={"saelens": str(paths["saelens_dir"])})
    return TrainingJob.objects.get(pk=job.pk)


def files_of(job_or_sweep_id, data_dir):
    return sorted(p.name for folder in ("models", "activations") for p in (data_dir / folder).glob(f"{job_or_sweep_id}_*"))


def purge(*args):
    out = StringIO()
    call_command("purge_artifacts", *args, stdout=out)
    return out.getvalue()


def test_a_dry_run_says_what_it_would_delete_and_deletes_nothing(alice, data_dir):
    old = finished_job(alice, days_ago=40)
    before = files_of(old.id, data_dir)
    output = purge("--older-than-days", "30", "--dry-run")
    assert f"would delete {data_dir / 'models' / (old.id + '_sae.pt')}" in output
    assert "Would free 9.0 kB in 6 files and folders of 1 jobs ended more than 30 days ago." in output
    assert files_of(old.id, data_dir) == before and len(before) == 6
    old.refresh_from_db()
    assert old.artifacts_purged_at is None and old.checkpoints.count() == 1


def test_it_deletes_the_files_of_jobs_that_ended_before_the_cutoff_and_keeps_their_rows(alice, data_dir):
    old = finished_job(alice, days_ago=40)
    failed = finished_job(alice, days_ago=31, status=TrainingJob.Status.FAILED)
    recent = finished_job(alice, days_ago=5)
    running = finished_job(alice, days_ago=90)
    TrainingJob.objects.filter(pk=running.pk).update(status=TrainingJob.Status.RUNNING)
    stranger = data_dir / "models" / "notes.txt"
    stranger.write_text("not a job's")
    output = purge("--older-than-days", "30")
    assert "Freed 18.0 kB in 12 files and folders of 2 jobs ended more than 30 days ago." in output
    assert files_of(old.id, data_dir) == [] and files_of(failed.id, data_dir) == []
    assert len(files_of(recent.id, data_dir)) == 6 and len(files_of(running.id, data_dir)) == 6
    assert stranger.exists()
    old.refresh_from_db()
    assert old.artifacts_purged_at is not None and old.status == TrainingJob.Status.COMPLETED
    assert not old.checkpoints.exists()
    assert TrainingJob.objects.get(pk=recent.pk).artifacts_purged_at is None
    assert "Freed 0 bytes in 0 files and folders of 0 jobs" in purge("--older-than-days", "30")  # once only


def test_a_purged_jobs_downloads_and_features_answer_410_and_its_status_and_page_say_so(alice, alice_api, client,
                                                                                        data_dir):
    job = finished_job(alice, days_ago=40)
    assert alice_api.get(f"/api/v1/train/{job.id}/download?artifact=weights").status_code == 200
    purge("--older-than-days", "30")
    for artifact in ("saelens", "weights", "metadata"):
        response = alice_api.get(f"/api/v1/train/{job.id}/download?artifact={artifact}")
        assert response.status_code == 410
        assert response.json()["detail"].startswith(f"Job {job.id}'s {artifact} was removed by retention on ")
    for path in (f"/api/v1/train/{job.id}/features", f"/api/v1/train/{job.id}/features/0"):
        response = alice_api.get(path)
        assert response.status_code == 410 and "feature analysis was removed by retention" in response.json()["detail"]
    status = alice_api.get(f"/api/v1/train/{job.id}/status").json()
    assert status["artifacts_removed_at"] is not None and status["last_checkpoint"] is None
    result = alice_api.get(f"/api/v1/train/{job.id}/result").json()
    assert result["artifacts_removed_at"] == status["artifacts_removed_at"] and result["ready_for_find_service"] is False
    client.force_login(alice)
    page = client.get(f"/jobs/{job.id}/")
    assert page.status_code == 200 and "Removed by retention on " in page.content.decode()
    assert "?artifact=" not in page.content.decode()
    feature_page = client.get(f"/jobs/{job.id}/features/0/")
    assert feature_page.status_code == 410 and "removed by retention" in feature_page.content.decode()


def test_a_kept_jobs_status_says_nothing_was_removed(alice, alice_api):
    job = finished_job(alice, days_ago=1)
    purge("--older-than-days", "30")
    assert alice_api.get(f"/api/v1/train/{job.id}/status").json()["artifacts_removed_at"] is None


def test_the_days_default_to_the_setting_and_retention_is_off_without_either(alice, settings, data_dir):
    old = finished_job(alice, days_ago=10)
    settings.RETENTION_DAYS = 0
    with pytest.raises(CommandError, match="Give --older-than-days N, or set MISTUDIO_RETENTION_DAYS"):
        purge()
    settings.RETENTION_DAYS = 30
    purge()
    assert len(files_of(old.id, data_dir)) == 6
    settings.RETENTION_DAYS = 7
    purge()
    assert files_of(old.id, data_dir) == []
    with pytest.raises(CommandError, match="give at least 1 day"):
        purge("--older-than-days", "-1")


def test_a_sweeps_site_caches_go_with_its_last_member(alice, data_dir, sample_corpus_bytes):
    from corpora.models import Corpus

    corpus = Corpus.objects.create(owner=alice, name="c.txt", path=str(data_dir / "c.txt"), size_bytes=1,
                                   lines_count=1, documents_count=1, text_bytes=1)
    sweep = Sweep.objects.create(owner=alice, model_name="tiny/gpt2", corpus=corpus, layers=[1],
                                 hook_points=["resid_post"], members=[{}, {}])
    cache = data_dir / "activations" / f"{sweep.id}_L1_resid_post_activations.npy"
    old = finished_job(alice, days_ago=40, sweep=sweep)
    young = finished_job(alice, days_ago=2, sweep=sweep)
    cache.write_bytes(b"x" * 100)
    purge("--older-than-days", "30")
    assert cache.exists() and files_of(old.id, data_dir) == []
    purge("--older-than-days", "1")
    assert not cache.exists() and files_of(young.id, data_dir) == []
