"""train_sae: a run from its row source (engine.trainer.rows) and start (or checkpoint) through its
epochs to a TrainResult."""
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from engine.errors import EngineError
from engine.results import CheckpointInfo, TrainProgress, TrainResult
from engine.sae import get as architecture
from engine.trainer import checkpoint, streamed
from engine.trainer.config import TrainConfig, check_activations, check_config
from engine.trainer.epochs import Loop, run_layout, run_result, start_run
from engine.trainer.ordering import RowsReady
from engine.trainer.rows import CachedRows, StreamedRows, row_source


def train_sae(
    activations,  # np.ndarray | torch.Tensor | engine.trainer.rows.RowSource (or what row_source takes)
    config: TrainConfig,
    *,
    device: str = "cpu",
    checkpoint_dir: Path | None = None,
    checkpoint_prefix: str = "sae",
    on_progress: Callable[[TrainProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_checkpoint: Callable[[CheckpointInfo], None] | None = None,
    resume_from: Path | None = None,
    distributed: bool = False,
    first_epoch_rows=None,  # engine.activations.cache.RowRanges or an array of row numbers
    targets: np.ndarray | torch.Tensor | None = None,
) -> TrainResult:
    """`activations`: a row source (engine.trainer.rows), or what one is made of: an array or tensor
    [rows, d_in]; an engine.activations.extract.ExtractionStream still being written, whose rows the
    first epoch consumes as they arrive; or an engine.activations.stream.ActivationStream, whose rows
    stream from the model with no cache (engine.trainer.streamed; the result says streamed=True).

    `first_epoch_rows`: the order in which the rows were extracted (an ExtractionStream's
    `arrival`, or engine.activations.cache.load_arrival of its finished file: engine.activations.cache.RowRanges; an array
    of row numbers is taken too). The first epoch then
    draws them through a shuffle buffer in that order, which a run overlapping extraction must do;
    giving the same order for the finished file repeats that run exactly. When resuming, the
    checkpoint decides: the order is used if its run used one (and then must be given).

    `targets`: the rows the SAE predicts when they are not `activations` themselves (an architecture
    with a target_point, engine.sae.registry), an array [rows, d_out] whose row i goes with row i of
    `activations` (a transcoder's: the MLP's output for its input). Each side gets its own input
    scale; the loss and explained variance are on the targets. An SAE that reconstructs its input
    takes none.

    With `distributed`, call this in every rank of an initialised process group with the same
    activations and config; only rank 0 writes checkpoints, so give callbacks to rank 0 alone
    (should_stop may be given to any rank: all stop after the same step)."""
    check_config(config)
    source = row_source(activations, targets=targets, first_epoch_rows=first_epoch_rows)
    if targets is not None and not isinstance(source, CachedRows):
        # Its inputs and targets are read at the same rows: both must be there to read.
        raise EngineError("A run with targets trains on finished input and target files, not an extraction in progress")
    if isinstance(source, StreamedRows):
        return streamed.read_alone(source.stream, streamed.streamed_steps(
            source, config, device=device, checkpoint_dir=checkpoint_dir, checkpoint_prefix=checkpoint_prefix,
            on_progress=on_progress, should_stop=should_stop, on_checkpoint=on_checkpoint, resume_from=resume_from,
            distributed=distributed))
    stream, activations, targets = source.extraction, source.rows, source.targets
    if stream is not None and (resume_from is not None or distributed):
        raise EngineError("Resume or distributed training reads a finished activations file, not an extraction in progress")
    _check_targets(config, activations, targets)
    saved = checkpoint.load(resume_from) if resume_from is not None else None
    if saved is not None and saved.payload.get("streamed", False):
        raise EngineError(f"Checkpoint '{saved.name}' was trained on rows streamed from the model, not a cache: "
                          "resume it the same way (cache_activations never)")
    layout = run_layout(config, activations, saved, device=device, distributed=distributed,
                        first_epoch_rows=source.first_epoch_rows, targets=targets)
    rows_ready = RowsReady(stream, should_stop, config.stop_check_interval_s)
    run, generator = start_run(config, layout, activations, stream, saved, rows_ready, device=device)
    writer = checkpoint.Writer(checkpoint_dir, checkpoint_prefix, on_checkpoint,
                               enabled=layout.parallel is None or layout.parallel.rank == 0)
    loop = Loop(run, writer, layout, activations, stream, generator, rows_ready, should_stop, on_progress)
    try:
        stopped_reason = loop.epochs()
    finally:
        loop.close()
    return run_result(run, writer, layout, stopped_reason)


def _check_targets(config, activations, targets) -> None:
    """The architecture says whether it takes targets; given, they pair with the inputs row for row."""
    problem = architecture(config.architecture).targets_problem(targets is not None)
    if problem:
        raise EngineError(problem)
    if targets is not None:
        shape = check_activations(targets)
        if shape[0] != activations.shape[0]:
            raise EngineError(f"The targets have {shape[0]} rows and the inputs {activations.shape[0]}: "
                              "they must be extracted from the same tokens")
