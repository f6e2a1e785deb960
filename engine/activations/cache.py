"""A job's activation cache on disk, read back: the array (an fp16 .npy written by
engine.activations.extract, or a .npy/.safetensors a user brings), and the files extraction keeps beside
it: the token id of each row, where each sequence starts, and the order batches were written in.
"""
from pathlib import Path

import numpy as np

from engine.errors import ActivationsError

_FINITE_CHECK_ROWS = 65536


def token_index_paths(activations_path: Path) -> tuple[Path, Path]:
    """Where extraction keeps, beside the activations, the token id of each row and the row at
    which each sequence starts: what the feature analysis needs to show text around a token."""
    activations_path = Path(activations_path)
    stem = activations_path.name.removesuffix(".npy")
    return (activations_path.with_name(f"{stem}_tokens.npy"),
            activations_path.with_name(f"{stem}_sequence_starts.npy"))


def load_token_index(activations_path: Path):
    """(token_ids [n_rows] int32, sequence_starts [n_sequences] int64) written by
    extract_activations, or None when the activations came from elsewhere."""
    tokens_path, starts_path = token_index_paths(activations_path)
    if not (tokens_path.is_file() and starts_path.is_file()):
        return None
    return np.load(tokens_path, mmap_mode="r"), np.load(starts_path)


def arrival_path(activations_path: Path) -> Path:
    activations_path = Path(activations_path)
    return activations_path.with_name(f"{activations_path.name.removesuffix('.npy')}_arrival.npy")


def load_arrival(activations_path: Path, n_rows: int) -> "RowRanges | None":
    """The rows in the order extract_activations wrote them (what the trainer's first epoch
    follows), as runs of consecutive rows; None for activations from elsewhere or from before the
    order was kept."""
    index = load_token_index(activations_path)
    path = arrival_path(activations_path)
    if index is None or not path.is_file():
        return None
    starts = np.asarray(index[1], dtype=np.int64)
    lengths = np.diff(np.append(starts, n_rows))
    order = np.load(path)
    return RowRanges(starts[order], lengths[order])


class RowRanges:
    """Rows in some order, held as runs of consecutive rows (run i: starts[i], starts[i] + 1, ...,
    lengths[i] of them): an extraction's arrival order costs memory per sequence, not per row."""

    def __init__(self, starts, lengths):
        self.starts = np.asarray(starts, dtype=np.int64)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.ends = np.cumsum(self.lengths)  # the position after each run

    @classmethod
    def of_rows(cls, rows) -> "RowRanges":
        rows = np.asarray(rows, dtype=np.int64)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        firsts = np.concatenate([[0], breaks]) if len(rows) else np.zeros(0, dtype=np.int64)
        return cls(rows[firsts], np.diff(np.append(firsts, len(rows))))

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def rows(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The rows at positions [start, stop) of the order."""
        stop = len(self) if stop is None else min(int(stop), len(self))
        if start >= stop:
            return np.zeros(0, dtype=np.int64)
        first = int(np.searchsorted(self.ends, start, side="right"))
        last = int(np.searchsorted(self.ends, stop - 1, side="right"))
        starts, lengths = self.starts[first : last + 1].copy(), self.lengths[first : last + 1].copy()
        run_start = int(self.ends[first] - self.lengths[first])
        starts[0] += start - run_start
        lengths[0] -= start - run_start
        lengths[-1] -= int(self.ends[last]) - stop
        return concat_ranges(starts, lengths)

    def below(self, limit: int) -> tuple["RowRanges", np.ndarray]:
        """The rows under `limit`, in this order, and for each of their runs the position in this
        order where it starts. A run is a run of consecutive rows, so its rows under the limit
        are its first ones."""
        kept = np.clip(np.minimum(self.starts + self.lengths, limit) - self.starts, 0, None)
        nonempty = kept > 0
        return RowRanges(self.starts[nonempty], kept[nonempty]), (self.ends - self.lengths)[nonempty]

    def tiles(self, n_rows: int) -> bool:
        """Whether every row of [0, n_rows) comes exactly once."""
        by_start = np.argsort(self.starts, kind="stable")
        starts, lengths = self.starts[by_start], self.lengths[by_start]
        return (len(self) == n_rows and bool(np.all(lengths > 0)) and (len(starts) == 0 or int(starts[0]) == 0)
                and bool(np.array_equal(starts[1:], (starts + lengths)[:-1])))


def concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """[s0, s0+1, ..., s0+l0-1, s1, ...] without a Python loop."""
    total = int(lengths.sum())
    ends = np.cumsum(lengths)
    return np.repeat(starts - (ends - lengths), lengths) + np.arange(total, dtype=np.int64)


def load_activations(path: Path) -> np.ndarray:
    """A [tokens, d_model] float array; .npy files are memory-mapped, not read into RAM."""
    path = Path(path)
    if not path.is_file():
        raise ActivationsError(f"Activations file '{path.name}' does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise ActivationsError(f"'{path.name}' is not a readable .npy array: {exc}") from None
    elif suffix == ".safetensors":
        array = _load_safetensors(path)
    else:
        raise ActivationsError(f"Activations file '{path.name}' must be .npy or .safetensors, not '{suffix or 'no extension'}'")

    if array.ndim != 2 or array.shape[0] < 2:
        raise ActivationsError(
            f"Activations in '{path.name}' have shape {tuple(array.shape)}: expected 2-D [tokens, d_model] with at least 2 tokens"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise ActivationsError(f"Activations in '{path.name}' are {array.dtype}: expected a float dtype")
    for start in range(0, array.shape[0], _FINITE_CHECK_ROWS):
        if not np.isfinite(array[start : start + _FINITE_CHECK_ROWS]).all():
            raise ActivationsError(f"Activations in '{path.name}' contain NaN or infinite values (near row {start})")
    return array


def _load_safetensors(path: Path) -> np.ndarray:
    import torch
    from safetensors import SafetensorError, safe_open

    try:
        # Through torch so bfloat16 files load too (numpy has no bfloat16).
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
            if "activations" not in keys:
                raise ActivationsError(
                    f"'{path.name}' has no 'activations' tensor (found: {', '.join(keys) or 'none'}): save it under the key 'activations'"
                )
            tensor = handle.get_tensor("activations")
    except SafetensorError as exc:
        raise ActivationsError(f"'{path.name}' is not a readable safetensors file: {exc}") from None
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.numpy()
