"""The trainer's one way in: a row source (as SAELens' trainer takes a data provider).

A run needs from its input its rows' shape, whether they can be read in any order, and, by kind:
- CachedRows: an array or memmap [rows, d_in] read by index batches, with the rows the SAE predicts
  when they are not these (`targets` [rows, d_out], row for row) and the order extraction wrote the
  rows in (for a first epoch in that order);
- ExtractingRows: an extraction still writing its file (engine.activations.extract.ExtractionStream):
  its rows are read by index once `ready`, its first epoch follows its arrival order;
- StreamedRows: a pass of the model with no cache (engine.activations.stream.ActivationStream): its
  rows come front to back in blocks, and `seek_record` says where a resume reads the corpus from.
engine.trainer.loop.train_sae takes any of them; `row_source` makes one from what callers hold.
"""
from dataclasses import dataclass


@dataclass
class CachedRows:
    rows: object  # np.ndarray, np.memmap or torch.Tensor [n_rows, d_in]
    targets: object = None  # what the SAE predicts, when not `rows`: [n_rows, d_out], row i paired with rows[i]
    first_epoch_rows: object = None  # engine.activations.cache.RowRanges or an array of row numbers
    random_access = True
    extraction = None
    stream = None


@dataclass
class ExtractingRows:
    extraction: object  # engine.activations.extract.ExtractionStream
    targets = None
    random_access = True
    stream = None

    @property
    def rows(self):
        return self.extraction.array

    @property
    def first_epoch_rows(self):
        return self.extraction.arrival


@dataclass
class StreamedRows:
    stream: object  # engine.activations.stream.ActivationStream
    targets = None
    first_epoch_rows = None
    random_access = False
    extraction = None

    @property
    def rows(self):
        return self.stream  # its shape; its rows are read in blocks (engine.trainer.streamed)

    def seek_record(self, position):
        return self.stream.seek_record(position)


RowSource = CachedRows | ExtractingRows | StreamedRows


def row_source(activations, *, targets=None, first_epoch_rows=None) -> RowSource:
    """The row source for what a caller holds: a RowSource as it is, an extraction in progress, a
    stream from the model, or an array (with its targets and first-epoch order). The activation
    classes are told apart by what they offer, so the trainer imports no model code."""
    if isinstance(activations, (CachedRows, ExtractingRows, StreamedRows)):
        return activations
    if hasattr(activations, "wait") and hasattr(activations, "arrival"):
        return ExtractingRows(activations)
    if hasattr(activations, "seek_record") and hasattr(activations, "reader"):
        return StreamedRows(activations)
    return CachedRows(activations, targets, first_epoch_rows)
