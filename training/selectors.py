"""Reads of training jobs: which jobs a user sees, one job, and what a job says of itself (its
parameters, artifacts, runs and token). Nothing here writes; the writes are training.services."""
from django.conf import settings

from engine.devices import cpu_uses_bf16
from mistudio import crypto
from mistudio.errors import Forbidden, NotFound
from training.models import TrainingJob


def optimizations_applied(job: TrainingJob) -> str:
    """What this job will do to save time and memory, in the seed's words."""
    applied = [
        f"extraction stops once it has blocks.{job.layer_number}.hook_{job.hook_point or 'resid_post'}, under inference mode",
        f"bf16 weights on GPU, {'bf16' if cpu_uses_bf16(settings.CPU_BF16) else 'fp32'} on CPU (MISTUDIO_CPU_BF16)",
    ]
    if job.quantization != TrainingJob.Quantization.NONE:
        applied.append(f"{job.quantization} quantization")
    return f"Applied optimizations for {job.source_description}: " + "; ".join(applied)


def jobs_visible_to(user):
    """A user sees their own jobs; staff with the view permission see everyone's."""
    return TrainingJob.objects.visible_to(user)


def job_get(*, user, job_id: str) -> TrainingJob:
    # Someone else's job answers exactly like a missing one: its id tells nothing.
    job = jobs_visible_to(user).filter(pk=job_id).first()
    if job is None:
        raise NotFound(f"Job {job_id} not found")
    return job


def job_to_cancel(*, user, job_id: str) -> TrainingJob:
    """A job `user` sees (job_get) and may cancel: their own, or staff's with the change permission."""
    job = job_get(user=user, job_id=job_id)
    if not job.cancellable_by(user):
        raise Forbidden(f"Job {job_id} is not yours: cancelling another user's job needs the permission to change "
                        "training jobs (the admin's user permissions)")
    return job


def job_runs_summary(runs: list) -> dict:
    """What a job's result says of its runs: the seconds they spent training and extracting in
    all, and each run's own (a resumed job counts every run, not only its last)."""
    return {
        "training_time_seconds": round(sum(run.get("training_seconds") or 0.0 for run in runs), 3),
        "runs": [{key: run.get(key) for key in ("attempt", "started_at", "ended_at", "ended",
                                                "extraction_seconds", "training_seconds")} for run in runs],
    }


def job_cancel_requested(job_id: str) -> bool:
    return TrainingJob.objects.filter(pk=job_id, cancel_requested_at__isnull=False).exists()


def job_token(job: TrainingJob) -> str | None:
    return crypto.decrypt(job.encrypted_hf_token)


def job_parameters(job: TrainingJob) -> list[tuple[str, object]]:
    """What the job was asked to do, for people to read."""
    rows = [
        ("Source", job.source_description),
        ("Corpus", job.corpus.name if job.corpus_id else None),
        ("Layer", None if job.activations_file else job.layer_number),
        ("Hook point", job.hook_point or None),
        ("Special tokens excluded", job.exclude_special_tokens),
        ("BOS prepended (causal LMs)", job.prepend_bos),
        ("Packing", job.packing),
        ("Token budget (training_tokens)", f"{job.training_tokens:,}" if job.training_tokens else None),
        ("Cache activations", job.cache_activations),
        ("Disk plan", job_disk_summary(job)),
        ("Architecture", job.architecture),
        ("k", job.k),
        ("Target L0", job.target_l0),
        ("Matryoshka widths", ", ".join(map(str, job.matryoshka_widths)) if job.matryoshka_widths else None),
        ("Features (hidden_dim)", job.hidden_dim),
        ("Sparsity coefficient", job.sparsity_coeff),
        ("Learning rate", job.learning_rate),
        ("Sequences per forward (batch_size)", None if job.activations_file else job.batch_size),
        ("Tokens per SAE step (sae_batch_tokens)", job.sae_batch_tokens),
        ("Max epochs", job.max_epochs),
        ("Min loss", job.min_loss),
        ("Max sequence length", None if job.activations_file else job.max_sequence_length),
        ("Quantization", job.quantization),
        ("GPUs (gpu_ids, DDP)", ", ".join(map(str, job.gpu_ids)) if job.gpu_ids else None),
        ("Device", job.device or None),
        ("Attempts", job.attempts),
    ]
    return [(name, value) for name, value in rows if value not in (None, "")]


def job_disk_summary(job: TrainingJob) -> str | None:
    """The disk plan in a line: cache or stream, the sizes, and why."""
    plan = job.disk_plan
    if not plan:
        return None
    gb = 1024**3
    what = f"cache of {plan['cache_bytes'] / gb:.2f} GB" if plan["cache"] else "streams (no cache)"
    return (f"{what}, {plan['passes']} pass(es) of about {plan['rows_per_pass']:,} tokens; needs "
            f"{plan['needed_bytes'] / gb:.2f} GB of {plan['free_bytes'] / gb:.1f} GB free: {plan['reason']}")


def job_artifacts(job: TrainingJob) -> list[tuple[str, str]]:
    rows = [
        ("SAE weights", job.model_path),
        ("Activations cache", job.activations_path),
        ("Metadata", job.metadata_path),
        ("SAELens folder", (job.exports or {}).get("saelens")),
        ("Feature analysis", job.features_dir),
    ]
    rows += [(f"Checkpoint, epoch {c.epoch}", c.path) for c in job.checkpoints.all()]
    return [(name, path) for name, path in rows if path]


def jobs_by_sweep(jobs) -> list[dict]:
    """The job list as pages show it: a job of its own alone, a sweep's members together under it
    (where its first member comes in `jobs`' order), each job with its headline metrics."""
    groups, by_sweep = [], {}
    for job in jobs:
        evaluation = job.evaluation or {}
        row = {"job": job, "explained_variance": evaluation.get("explained_variance"), "l0": evaluation.get("l0")}
        if job.sweep_id is None:
            groups.append({"sweep": None, "jobs": [row]})
        elif job.sweep_id in by_sweep:
            by_sweep[job.sweep_id]["jobs"].append(row)
        else:
            by_sweep[job.sweep_id] = {"sweep": job.sweep, "jobs": [row]}
            groups.append(by_sweep[job.sweep_id])
    return groups
