"""A job as the engine runs it (engine.run): the spec its row maps to, and the callbacks that write
what the run says back to the row (progress, messages, the cache, what the run spent) and to a
terminal's progress bar (`report`). The engine is imported inside functions: the web process and
the queue's parent never load torch."""
import time
from pathlib import Path

from django.conf import settings

from training import selectors, services
from training.admission import disk as runplan
from training.services import JobLost
from training.hub import hub_token
from training.worker.reporting import (
    first_epoch_in_arrival_order,
    resume_checkpoint,
    train_callbacks,
    train_config,
    training_place,
)
from training.models import TrainingJob

# The engine's phases, as the job row names them.
PHASES = {"loading": TrainingJob.Phase.LOADING, "extracting": TrainingJob.Phase.EXTRACTING,
          "training": TrainingJob.Phase.TRAINING, "evaluating": TrainingJob.Phase.EVALUATING,
          "analyzing": TrainingJob.Phase.ANALYZING}


class Throttle:
    """True at most once per interval: progress writes and cancel checks must not hammer the DB."""

    def __init__(self, interval_s):
        self.interval_s = interval_s
        self.last = 0.0

    def __call__(self):
        now = time.monotonic()
        if now - self.last >= self.interval_s:
            self.last = now
            return True
        return False


def job_model(job: TrainingJob):
    """The model as checked when the job was made: its location, and a hub model's commit."""
    from engine.models.resolve import ResolvedModel

    return ResolvedModel(name=job.model_name, location=job.model_location, source=job.model_source,
                         revision=job.model_revision or None)


def job_hub_token(job: TrainingJob):
    """What the job may send the hub: its owner's token, or none (never the server's login)."""
    return hub_token(selectors.job_token(job))


def job_spec(job: TrainingJob, device: str):
    """The run the job asks for, on `device`: its model and corpus (or activations file), its
    TrainConfig, its files, the cache and checkpoint an earlier run left, and this installation's
    settings."""
    from engine.models.hub_files import HubLimits
    from engine.run import EvaluationSettings, FeatureSettings, RunPaths, RunSpec

    paths = services.job_artifact_paths(job)
    staged = job_staged_paths(job)
    on_model = not job.activations_file
    corpus = runplan.corpus_facts(job.corpus) if job.corpus_id else None
    return RunSpec(
        paths=RunPaths(activations=paths["activations_path"], model=staged["model_path"], metadata=staged["metadata_path"],
                       saelens_dir=staged["saelens_dir"], features_dir=staged["features_dir"],
                       checkpoint_dir=paths["checkpoint_dir"], targets=paths["targets_path"]),
        config=train_config(job),
        model=job_model(job) if on_model else None,
        corpus=corpus.path if corpus else None,
        text_field=corpus.text_field if corpus else "text",
        # Jobs record the packing they resolved; None (an activations file's) leaves the engine's default.
        packing=job.packing or None,
        training_tokens=job.training_tokens,
        cache_activations=job.cache_activations or "auto",
        disk_budget_bytes=settings.DISK_BUDGET_BYTES,
        activations_file=None if on_model else Path(job.activations_file),
        layer_number=job.layer_number,
        # An activations file's job records none of these (blank/null): the engine ignores them there.
        hook_point=job.hook_point or "resid_post",
        exclude_special_tokens=bool(job.exclude_special_tokens),
        prepend_bos=bool(job.prepend_bos),
        max_sequence_length=job.max_sequence_length,
        batch_size=job.batch_size,
        quantization=None if job.quantization == TrainingJob.Quantization.NONE else job.quantization,
        token=job_hub_token(job) if on_model else None,
        device=device,
        cpu_bf16=settings.CPU_BF16,
        models_cache_dir=settings.MODELS_CACHE_DIR,
        hub_limits=HubLimits(timeout_s=settings.HUB_TIMEOUT_S, max_bytes=settings.MODEL_MAX_BYTES or None,
                             reserve_bytes=settings.DISK_RESERVE_BYTES),
        checkpoint_prefix=services.job_checkpoint_prefix(job),
        resume_from=resume_checkpoint(job),
        # A resumed run reuses what its earlier run extracted (the file appears complete or not at all).
        cache=Path(job.activations_path) if on_model and job.activations_path else None,
        first_epoch_in_arrival_order=on_model and first_epoch_in_arrival_order(job),
        features=FeatureSettings(top_n=settings.FEATURE_TOP_N, window=settings.FEATURE_CONTEXT_WINDOW,
                                 max_tokens=settings.ANALYSIS_TOKENS or None,
                                 logit_tokens=settings.FEATURE_LOGIT_TOKENS),
        evaluation=EvaluationSettings(max_rows=settings.EVAL_MAX_TOKENS, ce_max_tokens=settings.CE_EVAL_TOKENS,
                                      logits_bytes=settings.EVAL_LOGITS_BYTES),
        run_id=job.id,
        model_info=job.model_info,
        corpus_name=job.corpus.name if job.corpus_id else None,
    )


# What a run writes under its attempt (services.job_staging_dir) and job_finish moves into place.
STAGED = ("model_path", "metadata_path", "saelens_dir", "features_dir")


def job_staged_paths(job: TrainingJob) -> dict[str, Path]:
    """The final names of the artifacts a run stages, each in its attempt's staging folder."""
    folder = services.job_staging_dir(job)
    folder.mkdir(parents=True, exist_ok=True)
    return {name: folder / path.name for name, path in services.job_artifact_paths(job).items() if name in STAGED}


def job_staged_moves(job: TrainingJob) -> dict[Path, Path]:
    """{staged: final} for what the run wrote of its staged artifacts (services.job_finish)."""
    finals = services.job_artifact_paths(job)
    return {staged: finals[name] for name, staged in job_staged_paths(job).items() if staged.exists()}


def job_callbacks(job: TrainingJob, device: str, report, should_stop):
    """The run's callbacks for this job; `report(dict)` follows the run in a terminal."""
    from engine.run import RunCallbacks

    row = _JobRow(job, device, report)
    on_progress, on_checkpoint = train_callbacks(job, report, row.extraction)
    return RunCallbacks(
        on_phase=row.phase, on_extraction_progress=row.extraction, on_cache_complete=row.cache_complete,
        on_train_progress=on_progress, on_checkpoint=on_checkpoint, on_analysis_progress=row.analysis_progress,
        on_error=row.failed, should_stop=should_stop, extra_training_stats=row.training_stats,
    )


class _ExtractionReport:
    """Extraction progress on the job row. While training runs beside it (an overlapped run) the
    training reports own the message and the progress bar; extraction's share is appended to it."""

    def __init__(self, job, report):
        self.job, self.report = job, report
        self.throttle = Throttle(settings.PROGRESS_INTERVAL_S)
        self.started = time.monotonic()
        self.training = False
        self.note = None  # "extracting 120/400 sequences (9000 tokens/s)" while both run

    def __call__(self, done, total, tokens):
        if not (self.throttle() or done == total):
            return
        elapsed = time.monotonic() - self.started
        rate = tokens / elapsed if elapsed > 0 else 0.0
        self.note = None if done == total else f"extracting {done}/{total} sequences ({rate:.0f} tokens/s)"
        if self.training:
            return
        eta = int((total - done) * elapsed / done) if done else None
        message = f"Extracting activations - {done}/{total} sequences ({rate:.0f} tokens/s)"
        services.job_update_progress(self.job, eta_s=eta, message=message, tokens_per_s=round(rate, 1),
                                     phase=TrainingJob.Phase.EXTRACTING, spent={"extraction_seconds": elapsed})
        self.report({"phase": "extracting", "done": done, "total": total, "message": message})


class _JobRow:
    """What the run's phases, cache, analysis, failure and stats write to the job row."""

    def __init__(self, job, device, report):
        self.job, self.device, self.report = job, device, report
        self.extraction = _ExtractionReport(job, report)
        self.analysis_throttle = Throttle(settings.PROGRESS_INTERVAL_S)
        self.analysis_started = time.monotonic()

    def phase(self, phase, *, device=None, overlapped=False, resume_from=None):
        job, update = self.job, services.job_update_progress
        if phase == "loading":
            update(job, device=device, message=f"Loading on {device}")
            self.report({"phase": "loading", "device": device})
        elif phase == "extracting":
            self.extraction.started = time.monotonic()
            update(job, phase=TrainingJob.Phase.EXTRACTING, message=f"Extracting activations on {device}")
        elif phase == "training":
            # While extraction still runs, it stays the phase until the first training report.
            self.extraction.training = not overlapped
            if not overlapped:
                update(job, phase=TrainingJob.Phase.TRAINING,
                       message=f"Training on {training_place(job, self.device)} - Epoch 1/{job.max_epochs}")
            if resume_from is not None:
                update(job, message=f"Resuming from {Path(resume_from).name}")
        elif phase == "evaluating":
            update(job, phase=TrainingJob.Phase.EVALUATING, progress=1.0, message="Evaluating on held-out tokens")
            self.report({"phase": "evaluating"})
        elif phase == "analyzing":
            self.analysis_started = time.monotonic()
            update(job, phase=TrainingJob.Phase.ANALYZING, message="Analyzing features")
            self.report({"phase": "analyzing"})

    def cache_complete(self, extraction):
        """The row keeps where the cache is and what extracting it measured, so a rerun reuses it
        and its result still reports the extraction."""
        from engine.run.records import extraction_stats

        services.job_update_progress(self.job, activations_path=str(extraction.path),
                                     extraction_stats=extraction_stats(extraction),
                                     spent={"extraction_seconds": extraction.seconds})

    def analysis_progress(self, done, total):
        if self.analysis_throttle() or done == total:
            elapsed = time.monotonic() - self.analysis_started
            rate = done / elapsed if elapsed > 0 else 0.0
            message = f"Analyzing features - {done}/{total} tokens"
            services.job_update_progress(self.job, message=message, tokens_per_s=round(rate, 1),
                                         eta_s=int((total - done) / rate) if rate > 0 else None)
            self.report({"phase": "analyzing", "done": done, "total": total, "message": message})

    def failed(self, phase, err):
        # The phase a failure happened in (an out-of-memory message names it); a job another
        # worker has taken over is not this run's to write.
        if not isinstance(err, JobLost):
            services.job_update_progress(self.job, phase=PHASES[phase])

    def training_stats(self, result) -> dict:
        """What every run of the job spent (this one's training time joins its entry in `runs`),
        and the extraction the run that extracted the activations measured (maybe an earlier run)."""
        services.job_update_progress(self.job, spent={"training_seconds": result.training_time_seconds})
        # Read, not refreshed: the run's job keeps the attempt it claimed (its fencing token).
        runs, extraction = TrainingJob.objects.filter(pk=self.job.pk).values_list("runs", "extraction_stats").get()
        extra = selectors.job_runs_summary(runs)
        if extraction:
            extra["extraction"] = extraction
        return extra
