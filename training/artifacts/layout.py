"""The names of a job's and a sweep's files in the data folder: the only module that spells them.

Everything a job writes is named after it, `<id>_...`, in models/ or activations/ (retention and
the quotas find a job's files by that prefix alone: named_after). What a run writes under its
attempt (its staging folder, its checkpoints, its DDP ranks' files) carries the attempt too,
`<id>_attempt-<n>...`, so a stale run never writes over the files of the run that took its job
over (training.services' docstring: fencing); ATTEMPT_FILE reads such a name back (recovery).

Plain paths from settings.DATA_DIR: no rows are read or written here, so every layer may ask.
"""
import re
from pathlib import Path

from django.conf import settings

STAGING_SUFFIX = ".part"

# What a run names after its attempt (staging_dir, checkpoint_prefix, ddp_files).
ATTEMPT_FILE = re.compile(r"(?P<job>.+?)_attempt-(?P<attempt>\d+)(?P<rest>\.part|_.+)")


def models_dir() -> Path:
    return settings.DATA_DIR / "models"


def activations_dir() -> Path:
    return settings.DATA_DIR / "activations"


def job_paths(job_id: str) -> dict[str, Path]:
    """A job's artifacts under their final names (the folders are made)."""
    models, activations = models_dir(), activations_dir()
    models.mkdir(parents=True, exist_ok=True)
    activations.mkdir(parents=True, exist_ok=True)
    return {
        "checkpoint_dir": models,
        "model_path": models / f"{job_id}_sae.pt",
        "activations_path": activations / f"{job_id}_activations.npy",
        # A transcoder's targets (the MLP's output), row for row with activations_path (its input).
        "targets_path": activations / f"{job_id}_targets.npy",
        "metadata_path": activations / f"{job_id}_metadata.json",
        "saelens_dir": models / f"{job_id}_saelens",
        "features_dir": models / f"{job_id}_features",
    }


def checkpoint_prefix(job_id: str, attempt: int) -> str:
    """The names of the checkpoints (and DDP files) the run of `job_id` at `attempt` writes."""
    return f"{job_id}_attempt-{attempt}"


def is_mid_epoch_checkpoint(path) -> bool:
    """Whether a checkpoint file is one written inside an epoch (the engine names those
    `<prefix>_checkpoint_<epoch>_step_<step>.pt`; engine.trainer.checkpoint)."""
    return "_step_" in Path(path).name


def staging_dir(job_id: str, attempt: int) -> Path:
    """The staging folder of the run of `job_id` at `attempt`."""
    return models_dir() / f"{checkpoint_prefix(job_id, attempt)}{STAGING_SUFFIX}"


def ddp_files(job_id: str, attempt: int) -> dict[str, Path]:
    """The DDP launch's files: what the ranks read, what rank 0 hands back, and their log."""
    folder, prefix = models_dir(), checkpoint_prefix(job_id, attempt)
    folder.mkdir(parents=True, exist_ok=True)
    return {"launch": folder / f"{prefix}_ddp_launch.json", "result": folder / f"{prefix}_ddp_result.pt",
            "log": folder / f"{prefix}_ddp.log"}


def sweep_site_path(sweep_id: str, layer_number: int, hook_point: str) -> Path:
    """Where a sweep keeps a site's activations, shared by the members that read there."""
    folder = activations_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{sweep_id}_L{layer_number}_{hook_point}_activations.npy"


# Downloads' names: f"{job_id}{suffix}", and the root folder inside the SAELens archive.
SAELENS_DOWNLOAD_SUFFIX = "_saelens.zip"
WEIGHTS_DOWNLOAD_SUFFIX = "_sae.pt"
METADATA_DOWNLOAD_SUFFIX = "_metadata.json"


def saelens_archive_root(job_id: str) -> str:
    return f"{job_id}_saelens"


def named_after(name: str, ids: set[str]) -> bool:
    """Whether `name` is `<id>_...` for one of `ids` (ids are words joined by '_', as names are)."""
    parts = name.split("_")
    return any("_".join(parts[:count]) in ids for count in range(2, len(parts)))


def files_named_after(name: str) -> list[Path]:
    """`<name>_...` in the data folder's models/ and activations/, files and folders."""
    found = []
    for folder in (models_dir(), activations_dir()):
        if folder.is_dir():
            found.extend(sorted(folder.glob(f"{_glob_escape(name)}_*")))
    return found


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)
