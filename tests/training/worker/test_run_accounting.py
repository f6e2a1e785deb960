"""A job's runs: each attempt is recorded, a killed one closed by the recovery check, and a
resumed job's result adds up what every run spent and keeps what the extracting run measured."""
import time

import pytest
import torch

from engine.trainer.step import Run
from tests.training.worker.test_clear_failures import run
from training import recovery, services
from training.models import TrainingJob
from training.worker.job import job_run

pytestmark = pytest.mark.django_db(transaction=True)

FIELDS = dict(model_name="tiny/gpt2", layer_number=1, hidden_dim=32, max_epochs=30, min_loss=0,
              max_sequence_length=16, architecture="topk", k=4)


def test_each_claim_opens_a_run_that_the_sweep_closes_when_its_worker_is_lost(alice, dead_pid):
    job = services.job_claim(TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2").pk)
    services.job_update_progress(job, spent={"extraction_seconds": 1.25})
    services.job_update_progress(job, spent={"training_seconds": 2.5})
    TrainingJob.objects.filter(pk=job.pk).update(worker_pid=dead_pid)
    assert recovery.jobs_recover_stale() == [job.pk]
    services.job_claim(job.pk)
    runs = TrainingJob.objects.get(pk=job.pk).runs
    assert [(r["attempt"], r["ended"]) for r in runs] == [(1, "worker lost"), (2, None)]
    assert (runs[0]["extraction_seconds"], runs[0]["training_seconds"]) == (1.25, 2.5)
    assert runs[0]["ended_at"] is not None and runs[1]["ended_at"] is None


def test_a_run_handed_back_to_the_queue_is_not_counted(alice):
    job = TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2")
    services.job_requeue(services.job_claim(job.pk), "GPU slot busy")
    job.refresh_from_db()
    assert job.attempts == 0 and job.runs == []


def test_the_result_adds_up_every_runs_training_time(alice, dead_pid):
    job = TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2")
    for seconds in (3.0, 4.5):
        claimed = services.job_claim(job.pk)
        services.job_update_progress(claimed, spent={"training_seconds": seconds})
        TrainingJob.objects.filter(pk=job.pk).update(worker_pid=dead_pid)
        recovery.jobs_recover_stale()
    job = services.job_claim(job.pk)
    services.job_update_progress(job, spent={"training_seconds": 0.5})
    services.job_finish(job, status="completed", message="done", training_stats={"final_loss": 1.0})
    stats = TrainingJob.objects.get(pk=job.pk).training_stats
    assert stats["training_time_seconds"] == 8.0
    assert [(r["attempt"], r["ended"], r["training_seconds"]) for r in stats["runs"]] == [
        (1, "worker lost", 3.0), (2, "worker lost", 4.5), (3, "completed", 0.5)]


class Killed(BaseException):
    """The worker process dies here (a SIGKILL leaves no handler to run)."""


@pytest.mark.slow
def test_a_rerun_that_finds_the_cache_complete_and_no_checkpoint_ends_as_an_uninterrupted_run(
        alice, hub_models, settings, monkeypatch, dead_pid, request, client):
    settings.OVERLAP_EXTRACTION = "on"  # the first epoch follows the extraction order
    settings.SHUFFLE_BUFFER_TOKENS = 512
    settings.MIN_SAE_STEPS = 3000  # epochs long enough to be killed in
    settings.CHECKPOINT_EVERY_EPOCHS = 1000  # no checkpoint before the end
    # Deterministic arithmetic: a timed decode choice or a multi-threaded reduction could differ
    # between the two jobs under load.
    settings.TOPK_DECODE = "dense"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    reference = run(alice, **FIELDS)
    assert reference.status == "completed", reference.message

    step = Run.step

    def dying(self, x, target=None):
        # In the second epoch: the cache is complete and recorded, no checkpoint exists yet, and
        # progress reports (PROGRESS_INTERVAL_S 0.1 in tests) have recorded this run's seconds.
        if self.state.epochs_done >= 1 and time.monotonic() - self.started_at > 0.5:
            raise Killed
        return step(self, x, target)

    monkeypatch.setattr(Run, "step", dying)
    with pytest.raises(Killed):
        run(alice, **FIELDS)
    monkeypatch.undo()
    killed = TrainingJob.objects.exclude(pk=reference.pk).get()
    assert killed.status == "running" and killed.activations_path and not killed.checkpoints.exists()
    TrainingJob.objects.filter(pk=killed.pk).update(worker_pid=dead_pid)
    assert recovery.jobs_recover_stale() == [killed.pk]

    settings.OVERLAP_EXTRACTION = "off"  # the rerun follows its first run's order, not today's setting
    rerun = job_run(killed.pk)
    assert rerun.status == "completed", rerun.message
    # (Drawn in another order, the first epoch ends ~0.5% off.)
    assert rerun.training_stats["final_loss"] == pytest.approx(reference.training_stats["final_loss"], rel=1e-6)
    assert rerun.evaluation["explained_variance"] == pytest.approx(reference.evaluation["explained_variance"], rel=1e-6)

    stats = rerun.training_stats
    first, second = stats["runs"]
    assert (first["ended"], second["ended"]) == ("worker lost", "completed")
    assert first["training_seconds"] > 0.4 and second["training_seconds"] > 0
    assert stats["training_time_seconds"] == pytest.approx(first["training_seconds"] + second["training_seconds"], abs=2e-3)
    # The first run extracted; the rerun reused its cache and reports what that extraction measured.
    assert first["extraction_seconds"] > 0 and second["extraction_seconds"] is None
    assert stats["extraction"]["overlapped_with_training"] is True
    assert stats["extraction"]["tokens"] == reference.training_stats["extraction"]["tokens"]

    # The job's page lists both runs, the lost one first.
    client.force_login(alice)
    page = client.get(f"/jobs/{rerun.pk}/").content.decode()
    rows = page.split('class="run-row"')[1:]
    assert len(rows) == 2 and "worker lost" in rows[0] and "completed" in rows[1]
