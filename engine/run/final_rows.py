"""The rows a run reads after training, read once.

The evaluation measures the last `evaluation.max_rows` rows of the held-out tail; the feature
analysis reads the last `features.max_tokens` rows of the pass (held out and trained on alike,
all of them in a run smaller than that). Both are suffixes of the pass, so one read of the longer
serves both: a streamed run keeps them as training computes them (its last blocks, and the held-out
rows of its last group) and computes only the rest with the model, once, holding them ([rows,
d_model] float16, with their token ids); a cached run reads them from its cache as the two walk
through them. Either way the memory is a
function of the two settings and d_model, never of the tokens trained on.
"""
from dataclasses import dataclass

import numpy as np

from engine.activations.stream import ActivationStream


@dataclass
class FinalRows:
    """Rows [first, n_rows) of the run's pass, in order, with what goes with them."""

    rows: object  # [n_rows - first, d]: an array, or a view of the cache
    first: int
    n_rows: int  # rows of the whole pass
    heldout_start: int  # the pass's first held-out row (0 when none were held out)
    eval_first: int  # the first row the evaluation measures
    analysis_first: int  # the first row the feature analysis reads
    token_ids: np.ndarray | None = None  # [n_rows - first] int32, None without tokens
    sequence_starts: np.ndarray | None = None  # ascending from 0, relative to `first`
    targets: object | None = None  # the rows the SAE predicts, when not `rows`: the same rows of the target site

    def rows_from(self, row: int):
        return self.rows[row - self.first :]

    def targets_from(self, row: int):
        return None if self.targets is None else self.targets[row - self.first :]

    def tokens_from(self, row: int) -> tuple:
        """(token ids, sequence starts from 0) of the rows from `row` on; (None, None) without tokens."""
        if self.token_ids is None:
            return None, None
        offset = row - self.first
        return self.token_ids[offset:], relative_starts(self.sequence_starts, offset, len(self.token_ids))


def firsts(spec, n_rows: int, heldout_start: int) -> tuple[int, int]:
    """(the first row the evaluation measures, the first the analysis reads) of a pass of n_rows."""
    eval_rows, analysis_rows = spec.evaluation.max_rows, spec.features.max_tokens
    eval_first = heldout_start if eval_rows is None else max(heldout_start, n_rows - eval_rows)
    return eval_first, 0 if analysis_rows is None else max(0, n_rows - analysis_rows)


def keep_final_rows(spec, stream: ActivationStream) -> None:
    """Have a streamed pass keep the rows read after training as training computes them (its last
    blocks, and the held-out rows its last group holds), so the model computes only the rest."""
    from engine.defaults import eval_rows

    n_rows = stream.n_rows
    stream.keep_from(min(firsts(spec, n_rows, n_rows - eval_rows(n_rows, spec.config.eval_fraction))))


def final_rows(spec, result, activations, *, token_index=None, targets=None) -> FinalRows:
    """The rows of `activations` (the run's cache, file or ActivationStream) the evaluation and the
    analysis read. `token_index`: the cache's (token ids, sequence starts), None when it has none."""
    n_rows = int(activations.shape[0])
    heldout_start = result.heldout_rows[0] if result.heldout_rows else 0
    eval_first, analysis_first = firsts(spec, n_rows, heldout_start)
    first = min(eval_first, analysis_first)
    common = dict(first=first, n_rows=n_rows, heldout_start=heldout_start, eval_first=eval_first,
                  analysis_first=analysis_first)
    if isinstance(activations, ActivationStream):
        if activations.kept_from == first:
            rows, token_ids = activations.kept_rows()
        else:
            rows, token_ids = activations.reader(first, n_rows).read_with_tokens(first, n_rows)
        starts = relative_starts(activations.sequence_starts(), first, n_rows)
        return FinalRows(rows=rows, token_ids=token_ids, sequence_starts=starts, **common)
    token_ids = starts = None
    if token_index is not None:
        all_ids, all_starts = token_index
        token_ids = all_ids[first:n_rows]
        starts = relative_starts(np.asarray(all_starts, dtype=np.int64), first, n_rows)
    return FinalRows(rows=activations[first:n_rows], token_ids=token_ids, sequence_starts=starts,
                     targets=None if targets is None else targets[first:n_rows], **common)


def relative_starts(starts: np.ndarray, first: int, stop: int) -> np.ndarray:
    """The sequence starts within rows [first, stop), counted from `first`, beginning with 0 (the
    rows from `first` on begin a sequence there, or mid-sequence)."""
    starts = np.asarray(starts, dtype=np.int64)
    inside = starts[(starts > first) & (starts < stop)] - first
    return np.concatenate([[0], inside]).astype(np.int64)
