"""Retention: the files of jobs that ended more than N days ago are deleted (`manage.py
purge_artifacts`, N from MISTUDIO_RETENTION_DAYS or --older-than-days), and their rows stay,
marked with when (TrainingJob.artifacts_purged_at): their downloads and features then answer 410
saying retention removed them, their status and result say when.

A job's files are those its runs wrote under the data folder, all named after it
(training.artifacts.layout: the SAE, its checkpoints, the activation cache and the files beside
it, the metadata, the SAELens folder, the feature analysis); a sweep's site caches, named after
the sweep, go once none of its members is left to read them. Nothing outside the data folder's
models/ and activations/ is touched: an activations file a job trained on from elsewhere stays."""
import shutil
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from django.utils import timezone

from mistudio.errors import ServiceError
from training.artifacts import layout
from training.models import Checkpoint, Sweep, TrainingJob


class Purged(ServiceError):
    """What a purged job made is gone for good: 410, as a file deleted by hand is."""

    status_code = 410


@dataclass
class PurgeReport:
    """What a purge removed (or, in a dry run, would remove)."""

    jobs: list[str] = field(default_factory=list)
    sweeps: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    bytes: int = 0


def artifacts_purge(*, older_than_days: int, dry_run: bool = False) -> PurgeReport:
    """Delete the files of jobs that ended (completed, failed or cancelled) more than
    `older_than_days` days ago and mark them purged; `dry_run` only says what it would delete."""
    if older_than_days < 1:
        raise ServiceError(f"older_than_days {older_than_days}: give at least 1 day.")
    now = timezone.now()
    before = now - timedelta(days=older_than_days)
    report = PurgeReport()
    due = TrainingJob.objects.filter(status__in=TrainingJob.FINISHED, completed_at__lt=before,
                                     artifacts_purged_at__isnull=True).order_by("completed_at")
    for job in due:
        report.jobs.append(job.pk)
        _remove(layout.files_named_after(job.pk), report, dry_run)
        if not dry_run:
            Checkpoint.objects.filter(job=job).delete()
            # Conditional: a job resumed meanwhile (never, once finished) keeps its files' record.
            TrainingJob.objects.filter(pk=job.pk, status__in=TrainingJob.FINISHED).update(artifacts_purged_at=now)
    purging = set(report.jobs)
    for sweep in Sweep.objects.filter(jobs__pk__in=purging).distinct():
        members = TrainingJob.objects.filter(sweep=sweep)
        if all(pk in purging for pk in members.filter(artifacts_purged_at__isnull=True).values_list("pk", flat=True)):
            report.sweeps.append(sweep.pk)
            _remove(layout.files_named_after(sweep.pk), report, dry_run)
    return report


def check_not_purged(job: TrainingJob, what: str) -> None:
    """Purged (410) when retention removed the job's files; `what`: the artifact asked for."""
    if job.artifacts_purged_at is not None:
        raise Purged(
            f"Job {job.id}'s {what} was removed by retention on {job.artifacts_purged_at:%Y-%m-%d %H:%M} UTC with the "
            "rest of its files (finished jobs' files are kept for a set number of days, MISTUDIO_RETENTION_DAYS). "
            "Train a new job with its parameters to get another.")


def _remove(paths: list[Path], report: PurgeReport, dry_run: bool) -> None:
    for path in paths:
        try:
            size = (sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
                    if path.is_dir() and not path.is_symlink() else path.lstat().st_size)
        except FileNotFoundError:
            continue
        report.paths.append(path)
        report.bytes += size
        if dry_run:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
