"""The seed's response documents, built from a job row. The API, the CLI and the admin show these."""
import math

from training.models import TrainingJob

# The seed's training_stats keys come first; miStudio's additions follow them.
_SEED_STATS = ("final_loss", "total_epochs", "training_time_seconds", "convergence_epoch", "feature_statistics")


def status_document(job: TrainingJob) -> dict:
    last = job.last_checkpoint
    return {
        "job_id": job.id,
        "status": job.status,
        "phase": job.phase,
        "progress": job.progress,
        "current_epoch": job.current_epoch,
        # PostgreSQL keeps a NaN that JSON cannot carry (an early cancel's loss): it reads as null.
        "current_loss": job.current_loss if job.current_loss is None or math.isfinite(job.current_loss) else None,
        "estimated_time_remaining": job.eta_s,
        "message": job.message,
        "device": job.device,
        "tokens_per_s": job.tokens_per_s,
        "hook_point": job.hook_point or None,
        "exclude_special_tokens": job.exclude_special_tokens,
        "prepend_bos": job.prepend_bos,
        **_corpus_reading(job),
        "model_info": job.model_info,
        "last_checkpoint": last.path if last else None,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "completed_at": job.completed_at,
        "artifacts_removed_at": job.artifacts_purged_at,
    }


def result_document(job: TrainingJob) -> dict:
    completed = job.status == TrainingJob.Status.COMPLETED
    stats = job.training_stats
    if stats:
        stats = {**{k: stats[k] for k in _SEED_STATS if k in stats}, **stats}
    return {
        "job_id": job.id,
        "status": job.status,
        "message": job.message,
        "model_path": job.model_path or None,
        "activations_path": job.activations_path or None,
        "metadata_path": job.metadata_path or None,
        "training_stats": stats,
        "feature_count": job.hidden_dim,
        "model_info": job.model_info,
        "model_revision": job.model_revision or None,
        "ready_for_find_service": completed and bool(job.model_path and job.activations_path)
                                  and job.artifacts_purged_at is None,
        "checkpoints": [c.path for c in job.checkpoints.all()],
        "error": job.error or None,
        "architecture": job.architecture,
        "k": job.k,
        "matryoshka_widths": job.matryoshka_widths,
        "gpu_ids": job.gpu_ids,
        "hook_point": job.hook_point or None,
        "exclude_special_tokens": job.exclude_special_tokens,
        "prepend_bos": job.prepend_bos,
        **_corpus_reading(job),
        "evaluation": job.evaluation,
        "warnings": job.warnings,
        "exports": job.exports,
        "artifacts_removed_at": job.artifacts_purged_at,
    }


def _corpus_reading(job: TrainingJob) -> dict:
    """How the job reads its corpus and what it writes to disk; null where an activations file's
    job has none."""
    return {
        "packing": job.packing or None,
        "training_tokens": job.training_tokens,
        "cache_activations": job.cache_activations or None,
        "disk_plan": job.disk_plan,
    }


def summary_document(job: TrainingJob) -> dict:
    return {
        "job_id": job.id,
        "status": job.status,
        "model_name": job.source_description,
        "progress": job.progress,
        "created_at": job.created_at,
        "completed_at": job.completed_at,
    }


def curves_document(job: TrainingJob) -> dict:
    return {
        "job_id": job.id,
        "status": job.status,
        "phase": job.phase,
        "progress": job.progress,
        "message": job.message,
        "points": job.training_curve or [],
        "loss_history": (job.training_stats or {}).get("loss_history", []),
        "features_ready": bool(job.features_dir),
    }
