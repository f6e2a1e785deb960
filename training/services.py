"""Workflows on training jobs: create, cancel, and the state changes a run goes through.

Every interface (API, admin, CLI, worker task) calls these; none re-implements a step. The reads
(a user's jobs, one job, what a job says of itself) are training.selectors.

Fencing: a run's token is the attempt its claim counted (`attempts` after job_claim). Every write
a run makes to its job (progress, curve, run records, checkpoint rows, requeue, the ending and its
artifact paths) is an UPDATE conditional on the job still running at that attempt (job_owned,
job_fence); one that matches no row raises JobLost, and the run stops writing. A worker paused past
MISTUDIO_HEARTBEAT_STALE_S (SIGSTOP, a VM frozen, a swap storm) whose job another run took over
cannot land a write when it wakes, so the job's progress never goes back and its ending is the
owner's. Files follow the same rule. The final artifacts (SAE, metadata, SAELens folder, feature
analysis) are written in the attempt's staging folder (job_staging_dir) and moved into place inside
the fencing transaction of the ending, so a stale run's files never replace the owner's; its folder
goes when it stops, or at the next worker start (training.recovery.attempt_files_remove_stale).
Checkpoints carry the attempt in their names (job_checkpoint_prefix): the ordering is file whole on
disk, then its row in a fenced transaction (or, not owning the job, the file removed), so a resumed
run finds its predecessor's last checkpoint by its row, and a stale run neither overwrites the
owner's file of the same epoch nor records one. The activation cache keeps one name per job (a
resumed run reuses it; the targets of paired sites sit beside it) and its path on the row is fenced;
each extraction writes a partial file of its own (engine.files.AtomicFile, own=True) and the newer
run's start removes the older's, so a stale run never writes into the owner's rows, and the
rename that would put its file in place fails.
"""
import copy
import logging
import math
import os
import shutil
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Case, F, TextField, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from corpora.selectors import corpus_for_user
from engine import sae as architectures
from engine.finite import json_ready
from mistudio import crypto
from mistudio.errors import Conflict, Forbidden, ServiceError
from training import selectors
from training.admission import model as modelcheck
from training.admission import quotas
from training.admission import disk as runplan
from training.artifacts import layout
from training.models import Sweep, TrainingJob
from training.requests import JobRequest, paired_sites

logger = logging.getLogger("training")

TASK_PATH = "training.tasks.run_training_job"
SWEEP_TASK_PATH = "training.tasks.run_sweep"


def job_create(*, owner, request: JobRequest, enqueue: bool = True, any_local_path: bool = False) -> TrainingJob:
    """Validate a request against the owner's quotas and the real corpus, model and machine, save
    the job, and queue it once the transaction commits (the worker must find the row it is handed)."""
    quotas.check_active_jobs(owner)  # at once: a request over the quota costs no model reading
    quotas.check_running_width(owner, request.gpu_ids)
    columns = job_columns(owner=owner, request=request, any_local_path=any_local_path)
    quotas.check_storage(owner, plan=columns["disk_plan"])
    with transaction.atomic():
        owner_lock(owner)
        quotas.check_active_jobs(owner)  # again, under the lock: two requests at once make one job
        # Queued as of now in the row itself: should the broker not take the task after the commit,
        # the watchdog finds the job by this and hands it over again (job_enqueue).
        job = TrainingJob.objects.create_with_fresh_id(**columns, enqueued_at=timezone.now() if enqueue else None)
        if enqueue:
            transaction.on_commit(lambda: job_enqueue(job.id))
    return job


def owner_lock(owner) -> None:
    """Inside a transaction: hold the owner's row until it commits, so that one user's requests
    count their active jobs one after another (SQLite's IMMEDIATE transactions already do)."""
    get_user_model().objects.select_for_update().filter(pk=owner.pk).exists()


def check_force(owner, request: JobRequest, *, on_the_machine: bool = False) -> None:
    """Forcing a job past its device's memory is for staff, and for whoever runs manage.py train on
    the machine itself (on_the_machine: the same trust that lets it name any local path)."""
    if request.force and not (on_the_machine or getattr(owner, "is_staff", False)):
        raise Forbidden("force: only staff may create a job whose memory estimate exceeds the device's memory; "
                        "leave force out and lower the sizes the refusal names.", field="force")


def job_columns(*, owner, request: JobRequest, any_local_path: bool = False, described=None,
                plan_disk: bool = True) -> dict:
    """The row a request makes, every check passed (ServiceError: what to fix). `described`: the
    model, already described (a sweep describes it once for all its members); `plan_disk` False
    leaves the disk plan to the caller (a sweep's members share their caches)."""
    check_force(owner, request, on_the_machine=any_local_path)
    quantization = request.quantization or TrainingJob.Quantization.NONE
    modelcheck.check_hook_point_name(request.hook_point)
    runplan.check_choices(packing=request.packing, cache_activations=request.cache_activations,
                          training_tokens=request.training_tokens)
    _check_architecture(request)
    _check_paired_sites(request)
    _check_gpu_ids(request)
    modelcheck.check_gpu_request(request.gpu_id, quantization, gpu_ids=request.gpu_ids)
    corpus = described = disk_plan = None
    memory_check = ""
    packing = request.packing
    if request.activations_file:
        modelcheck.check_activations_file(request.activations_file)
    else:
        corpus, described = _checked_model_and_corpus(owner, request, any_local_path=any_local_path,
                                                      described=described)
        memory_check = modelcheck.memory_verdict(
            described,
            quantization=quantization,
            hidden_dim=request.hidden_dim,
            batch_size=request.batch_size,
            max_sequence_length=request.max_sequence_length,
            sae_batch_tokens=request.sae_batch_tokens,
            layer_number=request.layer_number,
            # A gpu_ids job extracts on its first GPU.
            gpu_id=request.gpu_id if request.gpu_ids is None else request.gpu_ids[0],
            force=request.force,
        )
        packing = runplan.job_packing(corpus, request.packing)
        # Refused here (a 400 saying how large and what to change) rather than by a full disk mid-run.
        disk_plan = None if not plan_disk else runplan.disk_plan(corpus=corpus, described=described, packing=packing,
                                      max_sequence_length=request.max_sequence_length, hidden_dim=request.hidden_dim,
                                      max_epochs=request.max_epochs, training_tokens=request.training_tokens,
                                      cache_activations=_cache_mode(request), token=request.huggingface_token,
                                      sites=1 if paired_sites(request.architecture) is None else 2)
    # The request's fields are the job's columns, but for the corpus (a row) and the token (encrypted).
    columns = {name: value for name, value in asdict(request).items()
               if name not in ("corpus_file", "huggingface_token", "force")}
    columns.update(quantization=quantization, packing=packing)
    # What the run will use where the architecture derives it (a default from hidden_dim): the job
    # records that, so its documents and a resume see the same values.
    values = {field.name: getattr(request, field.name) for field in architectures.request_fields()}
    columns.update(architectures.get(request.architecture).resolved_fields(values, hidden_dim=request.hidden_dim))
    if request.activations_file:
        # Rows from elsewhere: no hook point, tokenization, packing or cache of ours applies, so
        # none is recorded. A training_tokens budget still caps what the SAE trains on.
        columns.update(hook_point="", exclude_special_tokens=None, prepend_bos=None, packing=None, cache_activations="")
    model_info = described.info.to_dict() if described is not None else None
    return dict(
        **columns,
        owner=owner,
        corpus=corpus,
        encrypted_hf_token=crypto.encrypt(request.huggingface_token or ""),
        requires_token=bool(model_info and model_info.get("requires_token")),
        memory_check=memory_check,
        disk_plan=disk_plan,
        model_info=model_info,
        # The worker loads what was checked here, never a fresh reading of a client's name.
        model_location=described.resolved.location if described is not None else "",
        model_source=described.resolved.source if described is not None else "",
        model_revision=(described.resolved.revision or "") if described is not None else "",
        message="Waiting for a worker",
    )


def _checked_model_and_corpus(owner, request: JobRequest, *, any_local_path: bool, described=None):
    """The owner's corpus and the described model, with the layer checked against it."""
    if not request.model_name:
        raise ServiceError("model_name: this field is required.", field="model_name")
    if not request.corpus_file:
        raise ServiceError("corpus_file: this field is required.", field="corpus_file")
    corpus = corpus_for_user(user=owner, name=request.corpus_file)
    if described is None:
        described = modelcheck.describe(request.model_name, token=request.huggingface_token,
                                        any_local_path=any_local_path)
    else:
        described = copy.copy(described)  # its info gets this job's layer: the caller's stays as it was
        described.info = copy.copy(described.info)
    total = described.info.total_layers
    if not 0 <= request.layer_number < total:
        raise ServiceError(
            f"layer_number {request.layer_number} is out of range: {request.model_name} has "
            f"{total} layers, so choose 0 to {total - 1}.", field="layer_number",
        )
    described.info.selected_layer = request.layer_number
    modelcheck.check_hook_point(described, request.hook_point, model_name=request.model_name)
    return corpus, described


def _check_architecture(request: JobRequest) -> None:
    """The architecture's own rules for the fields it takes (engine.sae)."""
    values = {field.name: getattr(request, field.name) for field in architectures.request_fields()}
    problem = architectures.check_request(request.architecture, values, hidden_dim=request.hidden_dim)
    if problem:
        # The registry's problems start with the field they are about ("k: ..."), in the API's words.
        named = problem.partition(":")[0]
        raise ServiceError(problem, field=named if named in {"architecture", *values} else None)


def _cache_mode(request: JobRequest) -> str:
    """What the worker will do: paired sites are always cached, both of them."""
    return request.cache_activations if paired_sites(request.architecture) is None else "always"


def _check_paired_sites(request: JobRequest) -> None:
    """An architecture that predicts another site (a transcoder reads the MLP's input and predicts
    its output: engine.sae.transcoder) is named by the site it predicts, its hook_point; both sites
    are cached from one forward and read at the same rows."""
    paired = paired_sites(request.architecture)
    if paired is None:
        return
    name = request.architecture
    if request.activations_file:
        raise ServiceError(f"activations_file: a {name} trains on a model's MLP input and output, extracted together: "
                           "give model_name and corpus_file instead.", field="activations_file")
    if request.hook_point != paired.target:
        raise ServiceError(f"hook_point: a {name} reads the MLP's input ({paired.input}) and predicts its output: "
                           f"hook_point must be {paired.target} (or left out), not '{request.hook_point}'.",
                           field="hook_point")
    if request.cache_activations == "never":
        raise ServiceError(f"cache_activations: transcoders need a cache: a {name} reads its input and target rows at the "
                           "same indices from two cached files; use auto or always.", field="cache_activations")
    if request.gpu_ids is not None:
        raise ServiceError(f"gpu_ids: a {name} trains on one GPU (gpu_id); training it on several is not supported yet.",
                           field="gpu_ids")


def _check_gpu_ids(request: JobRequest) -> None:
    ids = request.gpu_ids
    if ids is None:
        return
    if request.gpu_id is not None:
        raise ServiceError("gpu_ids: give gpu_id (one GPU) or gpu_ids (several GPUs), not both.", field="gpu_ids")
    if len(ids) < 2:
        raise ServiceError("gpu_ids: list at least 2 GPUs; for one GPU use gpu_id.", field="gpu_ids")
    if len(set(ids)) != len(ids):
        raise ServiceError(f"gpu_ids: {list(ids)} names a GPU more than once.", field="gpu_ids")
    if min(ids) < 0:
        raise ServiceError(f"gpu_ids: {list(ids)} has a negative index; GPUs are numbered from 0.", field="gpu_ids")


BROKER_DOWN_MESSAGE = ("Waiting for a worker: the task queue did not answer when the job was queued; it is handed "
                       "to the queue again once the queue answers and a worker is idle")


def job_enqueue(job_id: str) -> bool:
    """Hand the job to the queue; False when the broker could not take it (an outage: it is logged,
    and the job stays queued with its `enqueued_at`, so the watchdog hands it over again once a
    worker sees it waiting: training.recovery.jobs_requeue_orphans). A request that made the job
    never fails on it: the job exists, and a retried request would make a second one."""
    from django_q.tasks import async_task

    from gpus.selectors import queue_for

    sweep_id = TrainingJob.objects.filter(pk=job_id).values_list("sweep_id", flat=True).first()
    if sweep_id is not None:
        # A sweep's member runs in its sweep's task, beside the other members (a recovered one too).
        return sweep_enqueue(sweep_id)
    jobs = TrainingJob.objects.filter(pk=job_id)
    # The task gets the job id and nothing else: django-q2 pickles arguments into its tables. The
    # queue (django-q2's cluster name) routes it to a worker that has the GPU it needs.
    return _handed_to_broker(jobs, lambda: (
        jobs.update(enqueued_at=timezone.now()),
        async_task(TASK_PATH, job_id, task_name=job_id, cluster=queue_for(jobs.get())),
    ), what=f"job {job_id}")


def sweep_enqueue(sweep_id: str) -> bool:
    """Queue the one task that runs a sweep's queued members (training.worker.sweep); False, as for a
    job, when the broker could not take it."""
    from django_q.tasks import async_task

    from gpus.selectors import queue_for

    members = TrainingJob.objects.filter(sweep_id=sweep_id)

    def hand_over():
        now = timezone.now()
        Sweep.objects.filter(pk=sweep_id).update(enqueued_at=now)
        members.filter(status=TrainingJob.Status.QUEUED).update(enqueued_at=now)
        # One task runs every member; like a job's, it gets the id and nothing else. A duplicate is
        # harmless: each member is claimed once.
        async_task(SWEEP_TASK_PATH, sweep_id, task_name=sweep_id, cluster=queue_for(members.order_by("pk").first()))

    return _handed_to_broker(members.filter(status=TrainingJob.Status.QUEUED), hand_over, what=f"sweep {sweep_id}")


def _handed_to_broker(jobs, hand_over, *, what: str) -> bool:
    from mistudio.broker import BROKER_ERRORS

    try:
        hand_over()
        jobs.filter(message=BROKER_DOWN_MESSAGE).update(message="Waiting for a worker")  # handed over at last
        return True
    except BROKER_ERRORS as err:
        logger.warning("The task queue did not take %s (%s: %s); the watchdog hands it over again", what,
                       type(err).__name__, err)
    try:  # the job's own page says why it waits; the broker's address stays in the log
        jobs.filter(status=TrainingJob.Status.QUEUED).update(message=BROKER_DOWN_MESSAGE, updated_at=timezone.now())
    except BROKER_ERRORS:
        pass
    return False


def job_cancel(job: TrainingJob) -> TrainingJob:
    """A queued job is cancelled at once; a running one is asked to stop and its worker stops
    within seconds, keeping its checkpoints."""
    now = timezone.now()
    cancelled_queued = TrainingJob.objects.filter(pk=job.pk, status=TrainingJob.Status.QUEUED).update(
        status=TrainingJob.Status.CANCELLED,
        cancel_requested_at=now,
        completed_at=now,
        message="Cancelled before it started",
        encrypted_hf_token="",
        updated_at=now,
    )
    if not cancelled_queued:
        asked = TrainingJob.objects.filter(
            pk=job.pk, status=TrainingJob.Status.RUNNING, cancel_requested_at__isnull=True
        ).update(cancel_requested_at=now, message="Cancellation requested; stopping", updated_at=now)
        job.refresh_from_db()
        if not asked and job.is_finished:
            raise Conflict(f"Job {job.id} is already {job.status} and cannot be cancelled.")
    job.refresh_from_db()
    return job


def job_claim(job_id: str) -> TrainingJob | None:
    """Atomically move a queued job to running in this process, opening this run's entry in its
    `runs`; None when another worker has it or it was cancelled. The one conditional UPDATE is what
    keeps a job from running twice; the row lock keeps `runs` and `attempts` in step (a worker
    killed right after its claim still leaves its run recorded). The job's first claim also decides
    whether its first epoch follows the extraction order, as a run that trains while extracting
    must (MISTUDIO_OVERLAP_EXTRACTION), and the row keeps it: a rerun without a checkpoint (its
    worker killed after the cache was complete) trains the first epoch its first run trained,
    whatever the setting is by then."""
    now = timezone.now()
    with transaction.atomic():
        queued = TrainingJob.objects.select_for_update().filter(pk=job_id, status=TrainingJob.Status.QUEUED)
        job = queued.first()
        if job is None:
            return None
        run = {"attempt": job.attempts + 1, "host": settings.HOST_NAME, "pid": os.getpid(),
               "started_at": now.isoformat(), "ended_at": None, "ended": None,
               "extraction_seconds": None, "training_seconds": None}
        claimed = queued.update(
            status=TrainingJob.Status.RUNNING,
            phase=TrainingJob.Phase.LOADING,
            started_at=Coalesce(F("started_at"), Value(now)),
            message="Starting",
            updated_at=now,
            attempts=F("attempts") + 1,
            worker_host=settings.HOST_NAME,
            worker_pid=os.getpid(),
            heartbeat_at=now,
            runs=[*job.runs, run],
            first_epoch_in_arrival_order=Coalesce(F("first_epoch_in_arrival_order"), Value(
                not job.activations_file and settings.OVERLAP_EXTRACTION == "on")),
        )
    return TrainingJob.objects.get(pk=job_id) if claimed else None


def job_runs_closed(runs: list, *, ended: str, at) -> list:
    """`runs` with its last entry closed, if it is still open: how and when that run ended."""
    runs = [dict(run) for run in runs or []]
    if runs and runs[-1].get("ended") is None:
        runs[-1].update(ended=ended, ended_at=at.isoformat())
    return runs


class JobLost(Exception):
    """The job was taken over (recovered and claimed again by another run) while this run still
    ran it: a fenced write did not land. The run stops, writes nothing more, and releases only
    what it holds itself."""


def job_owned(job: TrainingJob):
    """The job's row while `job`'s run still owns it, as a queryset to update: running, and at the
    attempt that run claimed (its fencing token; attempts only grows once a run is lost:
    training.recovery re-queues without a claim, and the next claim counts one more)."""
    return TrainingJob.objects.filter(pk=job.pk, attempts=job.attempts, status=TrainingJob.Status.RUNNING)


@contextmanager
def job_fence(job: TrainingJob):
    """A transaction in which `job`'s run owns the job: the row is written first (which takes its
    lock, on SQLite the database's: IMMEDIATE transactions) and the caller's writes and file moves
    follow under that lock, so no recovery or claim comes between; JobLost when the run lost the
    job, with nothing written."""
    with transaction.atomic():
        if not job_owned(job).update(updated_at=timezone.now()):
            raise JobLost(f"job {job.pk}: a write of attempt {job.attempts} matched no row")
        yield


def job_requeue(job: TrainingJob, message: str, *, enqueue: bool = True) -> None:
    """Hand a claimed job back to the queue untouched (its attempt not counted); `enqueue` False
    leaves the task to the caller (a sweep queues one for all its members). Only the run that
    claimed it can: JobLost otherwise."""
    with job_fence(job):
        runs = TrainingJob.objects.filter(pk=job.pk).values_list("runs", flat=True).first() or []
        job_owned(job).update(status=TrainingJob.Status.QUEUED, phase=TrainingJob.Phase.WAITING, message=message,
                              attempts=F("attempts") - 1, updated_at=timezone.now(), runs=runs[:-1])
        if enqueue:
            transaction.on_commit(lambda: job_enqueue(job.pk))


def job_heartbeat(job: TrainingJob) -> bool:
    """Say this worker is alive; False when the job is no longer this run's (recovered elsewhere)."""
    return bool(job_owned(job).filter(worker_host=job.worker_host, worker_pid=job.worker_pid).update(
        heartbeat_at=timezone.now()))


def job_update_progress(job: TrainingJob, *, spent: dict | None = None, **fields) -> None:
    """Progress, messages, the curve and whatever else a run writes as it goes, on the row of the
    job `job`'s run still owns (JobLost otherwise). `spent`: seconds this run has spent so far
    (extraction_seconds, training_seconds), kept in its entry of `runs`."""
    fields["updated_at"] = timezone.now()
    if "message" in fields:  # a job asked to stop says so until it has stopped
        fields["message"] = Case(When(cancel_requested_at__isnull=False, then=F("message")),
                                 default=Value(fields["message"]), output_field=TextField())
    with job_fence(job):
        if spent:
            runs = TrainingJob.objects.filter(pk=job.pk).values_list("runs", flat=True).first()
            if runs:
                runs[-1].update({name: round(seconds, 3) for name, seconds in spent.items()})
                fields["runs"] = runs
        job_owned(job).update(**fields)


def job_finish(job: TrainingJob, *, status: str, message: str, files: dict | None = None, **fields) -> None:
    """Every ending goes through here, and every ending wipes the token. A result's
    training_stats get the job's runs, this one closed with its ending. `files` ({staged: final}):
    what the run wrote under its attempt (job_staging_dir), moved into place in the same
    transaction that confirms the run still owns the job, so a stale run's files never replace the
    owner's. JobLost, with nothing written or moved, when the run lost the job."""
    now = timezone.now()
    with job_fence(job):
        runs = job_runs_closed(TrainingJob.objects.filter(pk=job.pk).values_list("runs", flat=True).first(),
                               ended=status, at=now)
        if fields.get("training_stats") is not None:
            fields["training_stats"] = {**fields["training_stats"], **selectors.job_runs_summary(runs)}
        fields = {name: _storable(value) for name, value in fields.items()}
        for staged, final in (files or {}).items():
            _move_into_place(Path(staged), Path(final))
        job_owned(job).update(
            runs=runs,
            status=status,
            phase=TrainingJob.Phase.DONE,
            message=message,
            completed_at=now,
            updated_at=now,
            eta_s=None,
            encrypted_hf_token="",
            **fields,
        )


def _move_into_place(staged: Path, final: Path) -> None:
    """A file or folder renamed onto its final name, replacing what an earlier run of the job left
    there (one cancelled in its analysis, then resumed): renames within the data folder."""
    if not staged.is_dir():
        os.replace(staged, final)
        return
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staged.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _storable(value):
    """The ending's last write must not fail on a number: SQLite's and PostgreSQL's JSON columns
    refuse NaN, and PostgreSQL would keep a NaN loss that JSON cannot show. Not measured is null,
    with its reason in a document (engine.finite; the engine gives the precise reasons first)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return json_ready(value) if isinstance(value, (dict, list)) else value


def job_fail(job: TrainingJob, message: str) -> None:
    logger.warning("Job %s failed: %s", job.pk, message)
    job_finish(job, status=TrainingJob.Status.FAILED, message=f"Training failed: {message}", error=message)


def job_artifact_paths(job: TrainingJob) -> dict[str, Path]:
    return layout.job_paths(job.id)


def job_staging_dir(job: TrainingJob) -> Path:
    """Where the run of `job` at its attempt writes the artifacts a resumed run also writes (the
    SAE, its metadata, the SAELens folder, the feature analysis), under their final names, until
    job_finish moves them into place. Named after the job (retention and quotas count it)."""
    return layout.staging_dir(job.id, job.attempts)


def job_staging_remove(job: TrainingJob) -> None:
    """`job`'s run's staging folder, with whatever its ending did not move into place."""
    shutil.rmtree(job_staging_dir(job), ignore_errors=True)


def job_checkpoint_prefix(job: TrainingJob) -> str:
    """The names of the checkpoints `job`'s run writes: its attempt's own, so a stale run never
    overwrites the checkpoint a resumed run wrote under the same epoch; a resumed run finds its
    predecessor's by the path on its Checkpoint row."""
    return layout.checkpoint_prefix(job.id, job.attempts)


def job_checkpoint_record(job: TrainingJob, *, path: Path, epoch: int, step: int, replaced: Path | None) -> None:
    """The row of a checkpoint `job`'s run has written whole, if the run still owns the job;
    otherwise the file is removed (no one will resume from a stale run's checkpoint) and JobLost.
    A checkpoint from inside an epoch that an earlier run left goes once a later one is recorded:
    a job keeps one mid-epoch checkpoint at most across its runs, as within one (its row first, so
    the job's last checkpoint is always a file on disk; engine.trainer.checkpoint.Writer)."""
    from training.models import Checkpoint

    superseded = []
    try:
        with job_fence(job):
            Checkpoint.objects.update_or_create(job_id=job.pk, path=str(path), defaults={"epoch": epoch, "step": step})
            older = Checkpoint.objects.filter(job_id=job.pk).exclude(path=str(path))
            for row in older:
                mid_epoch_before = layout.is_mid_epoch_checkpoint(row.path) and (row.epoch, row.step) <= (epoch, step)
                if Path(row.path) == replaced or mid_epoch_before:
                    superseded.append(Path(row.path))
                    row.delete()
    except JobLost:
        Path(path).unlink(missing_ok=True)
        raise
    for old in superseded:
        old.unlink(missing_ok=True)
