"""The run state a checkpoint holds, and the checkpoint file format.

A checkpoint is a torch file of plain tensors, numbers, strings, lists and dicts (torch.load with
weights_only=True reads it). Its `format_version` says how to read it:
- 1 (no `format_version` key): written before versions were kept. Its later keys came in over
  time and are optional: tokens_since_fired, resampled_features, decode_path, first_epoch_mixed,
  then batch_tokens and sparsity_weight (without them the run's rules of then apply,
  engine.trainer.plan.run_constants); epoch_sums is a list [loss, mse, sparsity, tokens].
- 2: every key but tokens_trained, always; epoch_sums is a dict named like RunState.epoch_sums.
- 3: every key but the target-L0 controller's, always (tokens_trained and streamed came with
  budgets and streaming).
- 4: every key below, always (sparsity_multiplier and l0_ema came with relu's target_l0), but
  target_scaling_factor, written since runs with targets (absent: a run without), and stream_seek, written
  since streamed runs resume where they read (absent or None: a streamed resume tokenizes the
  corpus from its start, as before), and epoch_order, written since an epoch's order is computed
  a batch at a time (absent: the run goes on drawing torch.randperm orders, engine.trainer.permutation).
Every checkpoint of formats 1 to 3 still resumes as it would have (its tokens trained counted
from its epochs and steps; no controller: its multiplier 1).
"""
import glob
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from engine.errors import EngineError
from engine.files import AtomicFile
from engine.results import CheckpointInfo
from engine.trainer import permutation

FORMAT_VERSION = 4
_SUMS = ("loss", "mse", "sparsity", "tokens")


def empty_sums() -> dict:
    return {"loss": 0.0, "mse": 0.0, "sparsity": 0.0, "tokens": 0}


@dataclass
class RunState:
    """Everything a checkpoint must hold to continue exactly where training stopped."""

    scaling_factor: float = 1.0
    step: int = 0
    epochs_done: int = 0
    epoch_step: int = 0  # steps done in the epoch in progress
    epoch_sums: dict = field(default_factory=empty_sums)  # token-weighted sums of the epoch in progress, and its tokens
    epoch_rng_state: torch.Tensor | None = None  # generator state before the permutation of the epoch in progress (or next)
    loss_history: list = field(default_factory=list)
    last_epoch_mse: float | None = None
    tokens_since_fired: torch.Tensor | None = None  # [d_sae] int64, per feature
    resampled_features: int = 0
    decode_path: str | None = None  # chosen on the first step, kept by checkpoints for an exact resume
    first_epoch_mixed: bool = False  # the first epoch followed the extraction order (engine.trainer.ordering)
    epoch_order: str = permutation.FEISTEL  # how an epoch's random order is drawn (engine.trainer.permutation)
    batch_tokens: int = 0  # tokens per step (engine.trainer.plan), fixed for the run
    sparsity_weight: float = 0.0  # the sparsity term's weight, fixed for the run
    tokens_trained: int = 0  # rows the SAE has stepped on, over all epochs
    streamed: bool = False  # the rows streamed from the model (engine.trainer.streamed), no cache
    # The target-L0 controller (engine.trainer.target_l0): the sparsity weight's factor, and the
    # smoothed L0 it steers by (None until its first step).
    sparsity_multiplier: float = 1.0
    l0_ema: float | None = None
    target_scaling_factor: float | None = None  # the targets' scale (None: a run without targets)
    # A streamed run's place in its corpus (engine.activations.stream.ActivationStream.seek_record); None: a cache's.
    stream_seek: dict | None = None


@dataclass
class Saved:
    """A checkpoint as read, whatever its format."""

    name: str
    payload: dict
    batch_tokens: int | None  # None: written before checkpoints kept the run's batch and weight
    sparsity_weight: float | None


def write(path: Path, *, sae, optimizer, state: RunState, config, mid_epoch: bool) -> CheckpointInfo:
    payload = {
        "format_version": FORMAT_VERSION,
        "sae": {k: v.detach().cpu() for k, v in sae.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "epoch": state.epochs_done,
        "epoch_step": state.epoch_step if mid_epoch else 0,
        "step": state.step,
        "scaling_factor": state.scaling_factor,
        "config": asdict(config),
        "loss_history": list(state.loss_history),
        "last_epoch_mse": state.last_epoch_mse,
        "epoch_sums": dict(state.epoch_sums),
        "epoch_rng_state": state.epoch_rng_state,
        # Numpy's RNG is only used before the first step (the scaling sample), so it needs no state.
        "torch_rng_state": torch.get_rng_state(),
        "tokens_since_fired": state.tokens_since_fired.detach().cpu(),
        "resampled_features": state.resampled_features,
        "decode_path": state.decode_path,
        "first_epoch_mixed": state.first_epoch_mixed,
        "epoch_order": state.epoch_order,
        "batch_tokens": state.batch_tokens,
        "sparsity_weight": state.sparsity_weight,
        "tokens_trained": state.tokens_trained,
        "streamed": state.streamed,
        "sparsity_multiplier": state.sparsity_multiplier,
        "l0_ema": state.l0_ema,
        "target_scaling_factor": state.target_scaling_factor,
        "stream_seek": state.stream_seek,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with AtomicFile(path) as partial:
        torch.save(payload, partial)
    return CheckpointInfo(path=path, epoch=state.epochs_done, step=state.step)


def file_name(prefix: str, state: RunState, *, mid_epoch: bool) -> str:
    """<prefix>_checkpoint_<epochs done>.pt at an epoch's end; one from inside an epoch (a cancel,
    a streamed run's checkpoint_interval_s) adds the step it follows:
    <prefix>_checkpoint_<epochs done>_step_<step>.pt."""
    if mid_epoch:
        return f"{prefix}_checkpoint_{state.epochs_done}_step_{state.step}.pt"
    return f"{prefix}_checkpoint_{state.epochs_done}.pt"


def load(path: Path) -> Saved:
    path = Path(path)
    if not path.is_file():
        raise EngineError(f"Checkpoint '{path.name}' does not exist")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    version = int(payload.get("format_version", 1))
    if version == 1:
        has_rules = "batch_tokens" in payload
        sums = payload["epoch_sums"]
        payload["epoch_sums"] = dict(zip(_SUMS, sums)) if isinstance(sums, list) else sums
        return Saved(path.name, payload, int(payload["batch_tokens"]) if has_rules else None,
                     float(payload["sparsity_weight"]) if has_rules else None)
    if version in (2, 3, FORMAT_VERSION):
        return Saved(path.name, payload, int(payload["batch_tokens"]), float(payload["sparsity_weight"]))
    raise EngineError(f"Checkpoint '{path.name}' has format {version}, newer than this miStudio reads ({FORMAT_VERSION}): upgrade it")


def restore(saved: Saved, sae, optimizer, state: RunState, *, d_in: int, config, n_train: int) -> None:
    payload, name = saved.payload, saved.name
    shape = tuple(payload["sae"]["W_enc"].shape)
    if shape != (d_in, config.hidden_dim):
        raise EngineError(
            f"Checkpoint '{name}' is for an SAE of shape {shape}, not ({d_in}, {config.hidden_dim}): "
            "resume with the same activations and hidden_dim"
        )
    saved_architecture = payload["config"].get("architecture", "relu")  # format 1 before architectures
    if saved_architecture != config.architecture:
        raise EngineError(f"Checkpoint '{name}' is for architecture '{saved_architecture}', not '{config.architecture}'")
    sae.load_state_dict(payload["sae"])
    optimizer.load_state_dict(payload["optimizer"])
    state.scaling_factor = float(payload["scaling_factor"])
    # Written since runs with targets (transcoders; an optional key of format 4: absent, a run without).
    if payload.get("target_scaling_factor") is not None:
        state.target_scaling_factor = float(payload["target_scaling_factor"])
    state.step = int(payload["step"])
    state.epochs_done = int(payload["epoch"])
    state.epoch_step = int(payload["epoch_step"])
    state.epoch_sums = dict(payload["epoch_sums"])
    state.epoch_rng_state = payload["epoch_rng_state"]
    state.loss_history = [float(v) for v in payload["loss_history"]]
    state.last_epoch_mse = payload["last_epoch_mse"]
    torch.set_rng_state(payload["torch_rng_state"])
    if "tokens_since_fired" in payload:
        state.tokens_since_fired = payload["tokens_since_fired"].to(torch.int64)
    state.resampled_features = int(payload.get("resampled_features", 0))
    state.decode_path = payload.get("decode_path")
    state.first_epoch_mixed = bool(payload.get("first_epoch_mixed", False))
    # Written before the Feistel order: such a run goes on in the order it started with.
    state.epoch_order = payload.get("epoch_order", permutation.RANDPERM)
    state.sparsity_multiplier = float(payload.get("sparsity_multiplier", 1.0))
    state.l0_ema = None if payload.get("l0_ema") is None else float(payload["l0_ema"])
    if "tokens_trained" in payload:
        state.tokens_trained = int(payload["tokens_trained"])
    else:  # before budgets: whole epochs, and the steps of the one in progress (full batches but the last)
        batch = int(payload.get("batch_tokens") or state.batch_tokens or 1)
        state.tokens_trained = state.epochs_done * n_train + min(n_train, state.epoch_step * batch)


class Writer:
    """Where and when a run writes its checkpoints (rank 0 only, in a data-parallel group).

    A run keeps one checkpoint from inside an epoch at most: the latest. Each checkpoint written
    replaces the previous mid-epoch one (`resumed_from` counts as the run's when it is one of this
    folder and prefix), which is deleted once the new one is whole and on_checkpoint has recorded
    it: a kill at any moment leaves a checkpoint to resume from, and at most two on disk
    (engine.disk.CHECKPOINTS_ON_DISK, the newest and the one being written; the next Writer of
    the run removes the partial file a kill left)."""

    def __init__(self, folder: Path | None, prefix: str, on_checkpoint, *, enabled: bool = True,
                 resumed_from: Path | None = None):
        self.folder = Path(folder) if folder is not None and enabled else None
        self.prefix = prefix
        self.on_checkpoint = on_checkpoint
        self.written: list[CheckpointInfo] = []
        self.last_at = time.monotonic()
        self.mid_epoch_file = None  # the latest checkpoint from inside an epoch, still on disk
        if self.folder is not None:
            # A process killed while writing leaves its partial file (engine.files.AtomicFile): no one reads it.
            for stale in self.folder.glob(f"{glob.escape(prefix)}_checkpoint_*.pt.partial"):
                stale.unlink(missing_ok=True)
        if self.folder is not None and resumed_from is not None and is_mid_epoch(Path(resumed_from), prefix):
            if Path(resumed_from).parent.resolve() == self.folder.resolve():
                self.mid_epoch_file = Path(resumed_from)

    def due(self, config, epochs_done: int) -> bool:
        """At an epoch's end: every checkpoint_every_epochs epochs, or checkpoint_interval_s since the last."""
        every = config.checkpoint_every_epochs
        return bool(every and epochs_done % every == 0) or self.interval_passed(config)

    def interval_passed(self, config) -> bool:
        return time.monotonic() - self.last_at >= config.checkpoint_interval_s

    def write(self, *, sae, optimizer, state: RunState, config, mid_epoch: bool) -> None:
        if self.folder is None:
            return
        path = self.folder / file_name(self.prefix, state, mid_epoch=mid_epoch)
        info = write(path, sae=sae, optimizer=optimizer, state=state, config=config, mid_epoch=mid_epoch)
        self.last_at = time.monotonic()
        replaced = self.mid_epoch_file if self.mid_epoch_file is not None and self.mid_epoch_file != path else None
        info.replaced = replaced
        self.mid_epoch_file = path if mid_epoch else None
        self.written = [w for w in self.written if w.path not in (path, replaced)] + [info]
        if self.on_checkpoint is not None:
            self.on_checkpoint(info)
        if replaced is not None:
            replaced.unlink(missing_ok=True)


def is_mid_epoch(path: Path, prefix: str) -> bool:
    """Whether `path` is named as a checkpoint from inside an epoch of a run with this prefix (file_name)."""
    return re.fullmatch(rf"{re.escape(prefix)}_checkpoint_\d+_step_\d+\.pt", Path(path).name) is not None
