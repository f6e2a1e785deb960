"""A job's training as its row sees it, in the worker (training.worker.spec) and in rank 0 of a
multi-GPU job (training.worker.ddp) alike: its TrainConfig, the checkpoint it resumes from, the order of
its first epoch, where it trains, and the callbacks that write training's progress, curve and
checkpoints to the row."""
import math
from pathlib import Path

from django.conf import settings

from training import services
from training.models import TrainingJob


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


def first_epoch_in_arrival_order(job) -> bool:
    """Whether the job's first epoch follows the extraction order, as a run that trains while
    extracting must (MISTUDIO_OVERLAP_EXTRACTION). Decided by the job's first run and kept on its
    row: a rerun without a checkpoint (its worker killed after the cache was complete) trains the
    first epoch its first run trained, whatever the setting is by then."""
    if job.first_epoch_in_arrival_order is None:
        job.first_epoch_in_arrival_order = not job.activations_file and settings.OVERLAP_EXTRACTION == "on"
        services.job_update_progress(job, first_epoch_in_arrival_order=job.first_epoch_in_arrival_order)
    return job.first_epoch_in_arrival_order


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
