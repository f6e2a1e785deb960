"""A run's writes to its job are fenced by the attempt it claimed: once the job was recovered and
claimed again, nothing the stale run writes lands (progress, curve, run records, checkpoints, the
ending, the artifacts it staged, a requeue), each says so (JobLost), and what it left is removed."""
import pytest

from training import recovery, services
from training.worker.reporting import train_callbacks
from training.models import Checkpoint, TrainingJob

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def taken_over(alice, dead_pid):
    """(the stale run's job, the new owner's): claimed, its worker lost, claimed again."""
    stale = services.job_claim(TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2").pk)
    services.job_update_progress(stale, progress=0.45, spent={"training_seconds": 1.0})
    TrainingJob.objects.filter(pk=stale.pk).update(worker_pid=dead_pid)
    assert recovery.jobs_recover_stale() == [stale.pk]
    owner = services.job_claim(stale.pk)
    services.job_update_progress(owner, progress=0.72, current_epoch=7)
    return stale, owner


def row(job):
    return TrainingJob.objects.filter(pk=job.pk).values().get()


def test_a_stale_runs_progress_curve_and_run_records_do_not_land(taken_over):
    stale, owner = taken_over
    before = row(owner)
    with pytest.raises(services.JobLost):
        services.job_update_progress(stale, progress=0.5, message="Training in progress - Epoch 5/9")
    with pytest.raises(services.JobLost):
        services.job_update_progress(stale, spent={"training_seconds": 9.0})
    with pytest.raises(services.JobLost):
        services.job_update_progress(stale, training_curve=[{"step": 1, "loss": 1.0}])
    assert services.job_heartbeat(stale) is False
    assert row(owner) == before
    assert services.job_heartbeat(owner) is True


def test_a_stale_runs_ending_does_not_land_and_its_staged_files_stay_out_of_place(taken_over):
    stale, owner = taken_over
    final = services.job_artifact_paths(owner)["model_path"]
    final.write_bytes(b"the owner's SAE")
    staged = services.job_staging_dir(stale)
    staged.mkdir(parents=True)
    (staged / final.name).write_bytes(b"the stale run's SAE")
    before = row(owner)
    with pytest.raises(services.JobLost):
        services.job_finish(stale, status=TrainingJob.Status.COMPLETED, message="done", model_path=str(final),
                            files={staged / final.name: final})
    with pytest.raises(services.JobLost):
        services.job_fail(stale, "it crashed")
    with pytest.raises(services.JobLost):
        services.job_requeue(stale, "slot busy")
    assert row(owner) == before
    assert final.read_bytes() == b"the owner's SAE"
    services.job_staging_remove(stale)
    assert not staged.exists()


def test_the_owners_ending_moves_its_staged_files_into_place(taken_over):
    _, owner = taken_over
    paths = services.job_artifact_paths(owner)
    paths["features_dir"].mkdir()
    (paths["features_dir"] / "meta.json").write_text("an earlier run's analysis")
    staged = services.job_staging_dir(owner)
    (staged / paths["features_dir"].name).mkdir(parents=True)
    (staged / paths["features_dir"].name / "meta.json").write_text("this run's analysis")
    (staged / paths["model_path"].name).write_bytes(b"this run's SAE")
    services.job_finish(owner, status=TrainingJob.Status.COMPLETED, message="done",
                        files={staged / paths["model_path"].name: paths["model_path"],
                               staged / paths["features_dir"].name: paths["features_dir"]})
    assert row(owner)["status"] == TrainingJob.Status.COMPLETED
    assert paths["model_path"].read_bytes() == b"this run's SAE"
    assert (paths["features_dir"] / "meta.json").read_text() == "this run's analysis"


def test_a_stale_runs_checkpoint_is_not_recorded_and_its_file_goes(taken_over):
    stale, owner = taken_over
    folder = services.job_artifact_paths(owner)["checkpoint_dir"]
    assert services.job_checkpoint_prefix(stale) != services.job_checkpoint_prefix(owner)
    mine = folder / f"{services.job_checkpoint_prefix(owner)}_checkpoint_6.pt"
    mine.write_bytes(b"owner")
    services.job_checkpoint_record(owner, path=mine, epoch=6, step=60, replaced=None)
    theirs = folder / f"{services.job_checkpoint_prefix(stale)}_checkpoint_6.pt"
    theirs.write_bytes(b"stale")
    with pytest.raises(services.JobLost):
        services.job_checkpoint_record(stale, path=theirs, epoch=6, step=60, replaced=None)
    assert not theirs.exists() and mine.read_bytes() == b"owner"
    assert list(Checkpoint.objects.filter(job_id=owner.pk).values_list("path", flat=True)) == [str(mine)]


def test_a_stale_runs_training_callbacks_raise_and_write_nothing(taken_over):
    stale, owner = taken_over
    from engine.results import TrainProgress

    on_progress, _ = train_callbacks(stale, lambda event: None)
    before = row(owner)
    progress = TrainProgress(epoch=5, total_epochs=9, step=50, total_steps=90, loss=1.0, mse=1.0, l1=0.0,
                             progress=0.5, eta_s=10.0, tokens_per_s=100.0, elapsed_s=3.0)
    with pytest.raises(services.JobLost):
        on_progress(progress)
    assert row(owner) == before


def test_a_later_checkpoint_replaces_an_earlier_runs_mid_epoch_one(taken_over):
    stale, owner = taken_over
    folder = services.job_artifact_paths(owner)["checkpoint_dir"]
    earlier = folder / f"{services.job_checkpoint_prefix(stale)}_checkpoint_3_step_40.pt"
    earlier.write_bytes(b"mid-epoch")
    Checkpoint.objects.create(job_id=owner.pk, path=str(earlier), epoch=3, step=40)
    later = folder / f"{services.job_checkpoint_prefix(owner)}_checkpoint_4.pt"
    later.write_bytes(b"epoch 4")
    services.job_checkpoint_record(owner, path=later, epoch=4, step=50, replaced=None)
    assert not earlier.exists()
    assert list(Checkpoint.objects.filter(job_id=owner.pk).values_list("path", flat=True)) == [str(later)]


def test_worker_start_removes_what_stale_runs_left_and_keeps_the_owners(taken_over):
    stale, owner = taken_over
    folder = services.job_artifact_paths(owner)["checkpoint_dir"]
    stale_staging, owner_staging = services.job_staging_dir(stale), services.job_staging_dir(owner)
    for staging in (stale_staging, owner_staging):
        staging.mkdir(parents=True)
        (staging / f"{owner.pk}_sae.pt").write_bytes(b"sae")
    unrecorded = folder / f"{services.job_checkpoint_prefix(stale)}_checkpoint_5.pt"
    recorded = folder / f"{services.job_checkpoint_prefix(stale)}_checkpoint_4.pt"
    for path in (unrecorded, recorded):
        path.write_bytes(b"checkpoint")
    Checkpoint.objects.create(job_id=owner.pk, path=str(recorded), epoch=4, step=40)

    removed = recovery.attempt_files_remove_stale()
    assert sorted(removed) == sorted([stale_staging.name, unrecorded.name])
    assert owner_staging.is_dir() and recorded.is_file()
    assert not stale_staging.exists() and not unrecorded.exists()
