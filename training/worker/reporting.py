"""What a job's run writes back to its row, and reads of the row to run it: the callbacks of the
whole run (job_callbacks: phases, extraction progress, the cache, the analysis, what the run
spent) and those of its training, in the worker and in rank 0 of a multi-GPU job
(training.worker.ddp) alike (train_callbacks: progress, the curve, checkpoints); the job's
TrainConfig, the checkpoint it resumes from, and where it trains. Every write is a service's, each
fenced (training.services: a run that lost its job writes nothing)."""
import logging
import math
import os
import time
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from training import selectors, services
from training.models import TrainingJob
from training.services import JobLost

# The engine's phases, as the job row names them.
PHASES = {"loading": TrainingJob.Phase.LOADING, "extracting": TrainingJob.Phase.EXTRACTING,
          "training": TrainingJob.Phase.TRAINING, "evaluating": TrainingJob.Phase.EVALUATING,
          "analyzing": TrainingJob.Phase.ANALYZING}
# Where a run paused by MISTUDIO_PAUSE_AT_PHASE leaves its marker, in the data folder.
PAUSED_AT_PHASE_FOLDER = "paused-at-phase"

logger = logging.getLogger("training")


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


def paused_at_phases(report):
    """`report`, pausing the run for good at each phase MISTUDIO_PAUSE_AT_PHASE names: a test hook,
    so a test SIGKILLs a worker in a phase however short it is instead of polling for it
    (tests/system/e2e/test_crash_recovery.py). Each entry pauses one run, once per data folder: the
    first run to report that phase (`training@N`: a training report of epoch N or later) writes its
    pid to DATA_DIR/paused-at-phase/<entry> and sleeps until it is killed; later runs go on."""
    entries = settings.PAUSE_AT_PHASE
    if not entries:
        return report
    pauses = [_pause_entry(entry) for entry in entries]

    def reporting(update):
        report(update)
        phase = PHASES.get(update.get("phase"))
        for entry, name, epoch in pauses:
            if phase == name and (update.get("epoch") or 0) >= epoch:
                _pause(entry)

    return reporting


def _pause_entry(entry: str) -> tuple[str, str, int]:
    name, at, epoch = entry.partition("@")
    if name not in PHASES.values() or (at and not (name == TrainingJob.Phase.TRAINING and epoch.isdigit())):
        raise ImproperlyConfigured(f"MISTUDIO_PAUSE_AT_PHASE: {entry!r} is not a phase: use "
                                   f"{', '.join(PHASES.values())}, or training@N for epoch N")
    return entry, name, int(epoch or 0)


def _pause(entry: str) -> None:
    folder = Path(settings.DATA_DIR) / PAUSED_AT_PHASE_FOLDER
    folder.mkdir(exist_ok=True)
    staged = folder / f".{entry}.{os.getpid()}"
    staged.write_text(str(os.getpid()))
    try:
        os.link(staged, folder / entry)  # made whole and at most once: the run that makes it pauses
    except FileExistsError:
        return
    finally:
        staged.unlink()
    logger.warning("MISTUDIO_PAUSE_AT_PHASE: process %s paused at %s until it is killed", os.getpid(), entry)
    while True:
        time.sleep(1)


class _Curve:
    """The training curve a job's page draws: one point per progress report, thinned to at most
    MAX_POINTS by dropping every other point (and sampling half as often) whenever it fills up, so
    a week-long job costs the same to store and draw as a minute-long one. A resumed run continues
    the curve its earlier run wrote."""

    MAX_POINTS = 400

    def __init__(self, points):
        self.points = [p for p in (points or []) if isinstance(p, dict)]
        self.stride = 1
        while len(self.points) > self.MAX_POINTS:
            self._thin()
        self.skipped = 0

    def _thin(self):
        self.points = self.points[::2]
        self.stride *= 2

    def add(self, point):
        if self.points and point["step"] <= self.points[-1]["step"]:
            return  # a resumed run re-reports steps its earlier run already drew
        self.skipped += 1
        if self.skipped < self.stride:
            return
        self.skipped = 0
        # JSON has no NaN: a metric not measured yet is null.
        self.points.append({k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in point.items()})
        if len(self.points) > self.MAX_POINTS:
            self._thin()


def train_config(job):
    """The job's TrainConfig: its row plus this installation's settings. A multi-GPU job's ranks
    get the one their worker built, in the training step it hands them (training.worker.ddp)."""
    from engine.trainer import TrainConfig

    return TrainConfig(
        architecture=job.architecture,
        k=job.k,
        target_l0=job.target_l0,
        matryoshka_widths=job.matryoshka_widths,
        hidden_dim=job.hidden_dim,
        sparsity_coeff=job.sparsity_coeff,
        learning_rate=job.learning_rate,
        sae_batch_tokens=job.sae_batch_tokens,
        max_epochs=job.max_epochs,
        min_loss=job.min_loss,
        seed=settings.TRAINING_SEED,
        min_steps=settings.MIN_SAE_STEPS,
        ram_budget_bytes=settings.ACTIVATIONS_RAM_BUDGET_BYTES,
        shuffle_buffer_tokens=settings.SHUFFLE_BUFFER_TOKENS,
        decode_path=decode_path(job.architecture),
        cpu_bf16=settings.CPU_BF16,
        checkpoint_every_epochs=settings.CHECKPOINT_EVERY_EPOCHS,
        checkpoint_interval_s=settings.CHECKPOINT_INTERVAL_S,
        progress_interval_s=settings.PROGRESS_INTERVAL_S,
    )


def decode_path(architecture: str) -> str:
    """MISTUDIO_TOPK_DECODE for this architecture: `sparse` pins TopK's gather, which needs codes of a
    fixed size per token; an architecture without them (batchtopk, relu, ...) decodes densely
    rather than failing after its extraction."""
    from engine import sae as architectures

    if settings.TOPK_DECODE == "sparse" and not architectures.get(architecture).sparse_decode:
        return "dense"
    return settings.TOPK_DECODE


def resume_checkpoint(job) -> Path | None:
    """The checkpoint a run of the job resumes from: its last one, where the file is still there."""
    last = job.last_checkpoint
    return Path(last.path) if last and Path(last.path).is_file() else None


def training_place(job, device: str) -> str:
    """Where the job trains, as its messages say: a device, or a multi-GPU job's processes."""
    if not job.gpu_ids:
        return device
    if str(device).startswith("cuda"):
        return f"GPUs {', '.join(map(str, job.gpu_ids))} (DDP)"
    return f"{len(job.gpu_ids)} CPU processes (DDP)"


def train_callbacks(job, report, extraction_report=None):
    """on_progress and on_checkpoint: what training writes to the job row (progress, the curve)
    and its checkpoint rows; in one process or in rank 0 of a multi-GPU job alike."""
    curve = _Curve(job.training_curve)

    def on_progress(p):
        message = f"Training in progress - Epoch {p.epoch}/{p.total_epochs}"
        if p.tokens_done is not None and p.total_tokens:
            message += f" - {p.tokens_done:,}/{p.total_tokens:,} tokens"
        phase = {}
        if extraction_report is not None:
            if not extraction_report.training:
                extraction_report.training = True
                phase = {"phase": TrainingJob.Phase.TRAINING}
            if extraction_report.note:
                message += f"; {extraction_report.note}"
        curve.add({"step": p.step, "epoch": p.epoch, "loss": p.loss, "mse": p.mse, "l0": p.l0,
                   "explained_variance": p.explained_variance, "tokens_per_s": round(p.tokens_per_s, 1)})
        # A run resumed from its final checkpoint takes no step: its one report has no loss (NaN),
        # and the row keeps the last one measured.
        loss = {"current_loss": float(p.loss)} if math.isfinite(p.loss) else {}
        services.job_update_progress(
            job,
            progress=round(min(p.progress, 1.0), 4),
            current_epoch=p.epoch,
            **loss,
            eta_s=None if p.eta_s is None else int(p.eta_s),
            message=message,
            tokens_per_s=round(p.tokens_per_s, 1),
            training_curve=curve.points,
            spent={"training_seconds": p.elapsed_s},
            **phase,
        )
        report({"phase": "training", "progress": p.progress, "epoch": p.epoch, "loss": p.loss,
                "total_epochs": p.total_epochs, "message": message})

    def on_checkpoint(info):
        # A cancel mid-epoch rewrites the file of the last completed epoch: one row per file. The
        # earlier mid-epoch checkpoint it replaces is deleted after this returns. A run that lost
        # the job records nothing and removes the file it wrote (services.job_checkpoint_record).
        services.job_checkpoint_record(job, path=info.path, epoch=info.epoch, step=info.step, replaced=info.replaced)

    return on_progress, on_checkpoint


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
