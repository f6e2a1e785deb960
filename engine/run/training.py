"""A run's training step: one SAE trained on a finished activations file (TrainStep), or on rows
the model computes as they are read (StreamStep). The run calls it in its own process by default
(`train_in_process`); a caller may plug in another, such as torchrun ranks that each call
`train_step(..., distributed=True)` with the step their parent handed them, or, for a StreamStep,
engine.run.runner.train_stream_step."""
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from engine.activations.cache import load_activations, load_arrival
from engine.results import CheckpointInfo, TrainProgress, TrainResult
from engine.trainer import TrainConfig, train_sae


@dataclass
class TrainStep:
    activations_path: Path
    config: TrainConfig
    device: str
    checkpoint_dir: Path
    checkpoint_prefix: str
    resume_from: Path | None = None
    # The first epoch follows the file's extraction order (engine.activations.cache.load_arrival):
    # a run that trained while extracting did, so its rerun from the finished file must too. A
    # resume follows whatever its checkpoint's run did (the trainer checks).
    arrival_order: bool = False
    targets_path: Path | None = None  # the rows the SAE predicts, when paired: row for row with activations_path

    def to_dict(self) -> dict:
        """JSON-ready, for a step handed to other processes."""
        return {**asdict(self), "activations_path": str(self.activations_path), "checkpoint_dir": str(self.checkpoint_dir),
                "resume_from": None if self.resume_from is None else str(self.resume_from),
                "targets_path": None if self.targets_path is None else str(self.targets_path)}

    @classmethod
    def from_dict(cls, values: dict) -> "TrainStep":
        return cls(**{**values, "activations_path": Path(values["activations_path"]), "config": TrainConfig(**values["config"]),
                      "checkpoint_dir": Path(values["checkpoint_dir"]),
                      "resume_from": None if values["resume_from"] is None else Path(values["resume_from"]),
                      "targets_path": None if values.get("targets_path") is None else Path(values["targets_path"])})

    def on_device(self, device: str, *, ram_share: int = 1) -> "TrainStep":
        """The same step on another device; `ram_share`: how many processes share the host's RAM
        budget, each loading its own copy."""
        budget = self.config.ram_budget_bytes
        return replace(self, device=device, config=replace(
            self.config, ram_budget_bytes=None if budget is None else budget // ram_share))


@dataclass
class StreamStep:
    """A streamed run's training step for other processes: each rebuilds the run's stream from the
    run's spec and these (engine.run.runner.train_stream_step), and trains on it. `rows_path`: a
    .npy of the pass's rows per sequence (what the run's tokenizing pass counted)."""

    config: TrainConfig
    device: str
    checkpoint_dir: Path
    checkpoint_prefix: str
    rows_path: Path
    n_rows: int | None  # rows the pass reads (None: the whole corpus)
    corpus_rows: int  # rows of one pass over the whole corpus
    resume_from: Path | None = None

    def to_dict(self) -> dict:
        return {**asdict(self), "checkpoint_dir": str(self.checkpoint_dir), "rows_path": str(self.rows_path),
                "resume_from": None if self.resume_from is None else str(self.resume_from)}

    @classmethod
    def from_dict(cls, values: dict) -> "StreamStep":
        return cls(**{**values, "config": TrainConfig(**values["config"]), "checkpoint_dir": Path(values["checkpoint_dir"]),
                      "rows_path": Path(values["rows_path"]),
                      "resume_from": None if values["resume_from"] is None else Path(values["resume_from"])})

    def on_device(self, device: str) -> "StreamStep":
        return replace(self, device=device)


# What a run calls to train: (the step, the activations the run has open, its callbacks) -> the
# result, or None when cancelled before one was handed back.
TrainFunction = Callable[..., TrainResult | None]


def train_step(
    step: TrainStep,
    *,
    activations=None,
    distributed: bool = False,
    on_progress: Callable[[TrainProgress], None] | None = None,
    on_checkpoint: Callable[[CheckpointInfo], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train the step's SAE. `activations`: the rows already open (an array, or an
    ExtractionStream still being written); by default the file, a .npy mapped rather than read."""
    if activations is None:
        # The run that made the step checked the file already.
        activations = open_rows(step.activations_path)
    rows = load_arrival(step.activations_path, activations.shape[0]) if step.arrival_order else None
    return train_sae(
        activations, step.config, device=step.device, checkpoint_dir=step.checkpoint_dir,
        checkpoint_prefix=step.checkpoint_prefix, on_progress=on_progress, should_stop=should_stop,
        on_checkpoint=on_checkpoint, resume_from=step.resume_from, distributed=distributed, first_epoch_rows=rows,
        targets=None if step.targets_path is None else open_rows(step.targets_path),
    )


def open_rows(path: Path):
    """A finished activations file: a .npy mapped rather than read, another format loaded."""
    path = Path(path)
    return np.load(path, mmap_mode="r") if path.suffix == ".npy" else load_activations(path)


def train_in_process(step: TrainStep, activations, callbacks) -> TrainResult:
    """The default training step: here, on the run's device, with the run's callbacks."""
    return train_step(step, activations=activations, on_progress=callbacks.on_train_progress,
                      on_checkpoint=callbacks.on_checkpoint, should_stop=callbacks.should_stop)
