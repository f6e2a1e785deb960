"""Per-user quotas on training: jobs queued or running at once (MISTUDIO_MAX_ACTIVE_JOBS_PER_USER,
a sweep's members each counted; one more is a 429), slots trained on at once
(MISTUDIO_MAX_RUNNING_JOBS_PER_USER: enforced when a worker leases, gpus.services; here only a
DDP job wider than it is refused) and storage (MISTUDIO_STORAGE_QUOTA_BYTES: the
user's corpora, their jobs' files on disk and what their queued jobs plan to write; a job that
would pass it is a 400). Staff are exempt from both: they run the server and answer for its disk.

A job's files are those the worker names after it (training.artifacts.layout, a
sweep's site caches after the sweep): `<id>_...` under the data folder's models/ and activations/."""
import os
from pathlib import Path

from django.conf import settings

from corpora.quotas import quota_applies, storage_used_bytes
from engine.disk import size_text
from mistudio.errors import ServiceError, TooManyRequests
from training.admission import disk as runplan
from training.artifacts import layout
from training.models import Sweep, TrainingJob

ACTIVE = (TrainingJob.Status.QUEUED, TrainingJob.Status.RUNNING)


def check_active_jobs(owner, *, adding: int = 1) -> None:
    """TooManyRequests when `adding` more jobs would put `owner` past the active-jobs quota."""
    limit = settings.MAX_ACTIVE_JOBS_PER_USER
    if not limit or getattr(owner, "is_staff", False):
        return
    active = TrainingJob.objects.filter(owner=owner, status__in=ACTIVE).count()
    if active + adding > limit:
        what = "a job" if adding == 1 else f"a sweep of {adding} members (each counts as a job)"
        raise TooManyRequests(
            f"You have {active} jobs queued or running and may have at most {limit} at once "
            f"(MISTUDIO_MAX_ACTIVE_JOBS_PER_USER), so {what} cannot be added now: wait for some to finish, or "
            "cancel some.")


def check_running_width(owner, gpu_ids) -> None:
    """A ServiceError when a DDP job asks for more GPUs than its owner may train on at once
    (MISTUDIO_MAX_RUNNING_JOBS_PER_USER, gpus.services.running_limit_reason): it would never start."""
    limit = settings.MAX_RUNNING_JOBS_PER_USER
    if not limit or not gpu_ids or getattr(owner, "is_staff", False) or len(gpu_ids) <= limit:
        return
    raise ServiceError(
        f"gpu_ids names {len(gpu_ids)} GPUs but you may train on at most {limit} at once "
        f"(MISTUDIO_MAX_RUNNING_JOBS_PER_USER): list at most {limit}.", field="gpu_ids")


def check_storage(owner, *, plan: dict | None) -> None:
    """A ServiceError when a job (or sweep) whose disk plan is `plan` (runplan; None: it writes
    nothing) would put `owner` past the storage quota, counting what their queued jobs plan to write
    beside what is on disk. A hub model's weights count while a queued job plans to download them
    (runplan.planned_bytes), not once they are in the hub cache, which every user's jobs share."""
    if not quota_applies(owner):
        return
    quota = settings.STORAGE_QUOTA_BYTES
    planned_bytes = runplan.planned_bytes(plan)
    used = storage_used_bytes(owner)
    queued = runplan.queued_plans_bytes(TrainingJob.objects.filter(owner=owner), all_disks=True)
    if used + queued + planned_bytes > quota:
        waiting = f" and your queued jobs plan to write {size_text(queued)}" if queued else ""
        download = (plan or {}).get("download_bytes") or 0
        weights = f" (the model's weights to download, {size_text(download)}, included)" if download else ""
        raise ServiceError(
            f"This job plans to write {size_text(planned_bytes)}{weights}, more than your storage quota leaves: you use "
            f"{size_text(used)} of {size_text(quota)} (MISTUDIO_STORAGE_QUOTA_BYTES, corpora and jobs' artifacts "
            f"together){waiting}. Delete corpora or old jobs' artifacts, or lower hidden_dim, max_epochs or "
            "training_tokens, or set cache_activations to never.")


def artifacts_bytes(user) -> int:
    """Bytes on disk of the files of the user's jobs and sweeps (corpora.quotas counts this)."""
    ids = set(TrainingJob.objects.filter(owner=user).values_list("pk", flat=True))
    ids |= set(Sweep.objects.filter(owner=user).values_list("pk", flat=True))
    if not ids:
        return 0
    total = 0
    for folder in (layout.models_dir(), layout.activations_dir()):
        if not folder.is_dir():
            continue
        with os.scandir(folder) as entries:
            for entry in entries:
                if layout.named_after(entry.name, ids):
                    total += _bytes(entry)
    return total


def _bytes(entry: os.DirEntry) -> int:
    try:
        if entry.is_dir(follow_symlinks=False):
            return sum(path.lstat().st_size for path in Path(entry.path).rglob("*")
                       if path.is_file() and not path.is_symlink())
        return entry.stat(follow_symlinks=False).st_size
    except FileNotFoundError:  # deleted while counted (a retention purge, a finished partial file)
        return 0
