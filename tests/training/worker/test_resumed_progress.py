"""What a resumed run shows while it runs: a run resumed from its final checkpoint takes no step,
and its one progress report has no loss to show."""
import math

import pytest

from engine.results import TrainProgress
from training import services
from training.models import TrainingJob
from training.worker.reporting import train_callbacks

pytestmark = pytest.mark.django_db


def report(loss):
    return TrainProgress(epoch=30, total_epochs=30, step=900, total_steps=900, loss=loss, mse=loss, l1=0.0,
                         progress=1.0, eta_s=0.0, tokens_per_s=100.0, elapsed_s=0.01)


def test_a_report_without_a_loss_keeps_the_last_loss_and_the_status_answers(alice, alice_api):
    job = services.job_claim(TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2").pk)
    on_progress, _ = train_callbacks(job, lambda event: None)
    on_progress(report(0.25))  # the run before the worker was killed
    on_progress(report(math.nan))  # the run resumed from the final checkpoint
    job.refresh_from_db()
    assert job.current_loss == 0.25
    status = alice_api.get(f"/api/v1/train/{job.pk}/status")
    assert status.status_code == 200 and status.json()["current_loss"] == 0.25


def test_a_loss_the_database_kept_as_nan_reads_as_null(alice, alice_api):
    # PostgreSQL keeps NaN in a float column (SQLite reads it back as NULL); JSON cannot carry it.
    job = TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2", status="cancelled", current_loss=math.nan)
    status = alice_api.get(f"/api/v1/train/{job.pk}/status")
    assert status.status_code == 200 and status.json()["current_loss"] is None
