"""A job as the engine runs it (engine.run): the spec its row maps to, read from the row and
never written to it (what the run writes back is training.worker.reporting), and where the run
stages the artifacts its ending moves into place. The engine is imported inside functions: the
web process and the queue's parent never load torch."""
from pathlib import Path

from django.conf import settings

from training import selectors, services
from training.admission import disk as runplan
from training.hub import hub_token
from training.worker.reporting import resume_checkpoint, train_config
from training.models import TrainingJob


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
        # Decided and kept on the row by the job's first claim (services.job_claim).
        first_epoch_in_arrival_order=on_model and bool(job.first_epoch_in_arrival_order),
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
