"""The first epoch over rows in extraction order: a shuffle buffer over arriving rows, and waiting
for rows an extraction still writes."""
import numpy as np
import torch

from engine.activations.cache import RowRanges
from engine.errors import EngineError


class Mixing:
    """The first epoch's order over rows arriving in extraction order: a buffer of `buffer_rows`
    training rows is shuffled, its first half emitted, the next half of the arrivals added, and so on
    (the last fill emitted whole). Each batch therefore needs only the rows that arrived before it,
    and which ones is a fixed function of the arrival order and the generator.

    `arrival`: the rows in extraction order, as engine.activations.cache.RowRanges (runs of a sequence's rows;
    an array of row numbers is taken too). Everything here is held per run, and the order is
    computed as the epoch reads it (MixedOrder): memory is the buffer's, whatever the rows."""

    def __init__(self, arrival, *, n_rows: int, n_train: int, buffer_rows: int, batch_tokens: int):
        if not isinstance(arrival, RowRanges):
            arrival = RowRanges.of_rows(arrival)
        if not arrival.tiles(n_rows):
            raise EngineError(f"The extraction order does not list each of the {n_rows} activation rows once")
        self.arrival = arrival
        # The training rows in arrival order, and where each of their runs starts among all arrivals
        # (held-out rows included).
        self.train, self._arrived_before = arrival.below(n_train)
        self.n_train = n_train
        self.half = max(1, min(buffer_rows, n_train) // 2)
        self.batch_tokens = batch_tokens
        self.first_fill = self.arrived_with(min(n_train, 2 * self.half) - 1)

    def arrived_with(self, train_row: int) -> int:
        """Arrivals (held-out rows included) up to and including the train_row-th training row."""
        run = int(np.searchsorted(self.train.ends, train_row, side="right"))
        into = train_row - int(self.train.ends[run] - self.train.lengths[run])
        return int(self._arrived_before[run]) + into + 1

    def order(self, generator: torch.Generator) -> "MixedOrder":
        return MixedOrder(self, generator)

    def needed(self, batch_index: int) -> int:
        """Rows of the arrival order that must be written before batch `batch_index` can run."""
        n = self.n_train
        last = min(n, (batch_index + 1) * self.batch_tokens) - 1
        train_rows = min(n, 2 * self.half + (last // self.half) * self.half)
        return self.arrived_with(train_rows - 1)


class MixedOrder:
    """A Mixing's epoch order, computed as it is read: order[a:b] with a never below an earlier
    read's start (a resume's first read skips ahead). The generator draws exactly what a whole-order
    shuffle would have drawn, a refill at a time, so the epoch's order, and the generator's state
    once it is read to its end, are those of the order computed at once."""

    def __init__(self, mixing: Mixing, generator: torch.Generator):
        self.mixing, self.generator = mixing, generator
        n = mixing.n_train
        self.taken = min(2 * mixing.half, n)
        self.buffer = mixing.train.rows(0, self.taken)
        self.pieces: list[np.ndarray] = []  # emitted rows not yet read past
        self.base = 0  # the position of pieces[0]'s first row
        self.emitted = 0  # positions emitted so far
        self.done = False

    def __len__(self) -> int:
        return self.mixing.n_train

    def __getitem__(self, positions: slice) -> torch.Tensor:
        start, stop, _ = positions.indices(len(self))
        if start < self.base:
            raise EngineError("The first epoch's order is read front to back")
        while self.emitted < stop and not self.done:
            self._refill()
        while self.pieces and self.base + len(self.pieces[0]) <= start:
            self.base += len(self.pieces.pop(0))
        held = np.concatenate(self.pieces) if self.pieces else np.zeros(0, dtype=np.int64)
        return torch.from_numpy(held[start - self.base : stop - self.base].copy())

    def drain(self) -> None:
        """Draw the rest of the order, unread: the generator then stands where the whole order
        leaves it, whatever part of it the epoch read (its last refill usually covers the end)."""
        while not self.done:
            self._refill()
            self.base, self.pieces = self.emitted, []

    def _refill(self) -> None:
        half, n = self.mixing.half, self.mixing.n_train
        buffer = self.buffer[torch.randperm(len(self.buffer), generator=self.generator).numpy()]
        if self.taken >= n:
            self.pieces.append(buffer)
            self.emitted += len(buffer)
            self.buffer, self.done = None, True
            return
        self.pieces.append(buffer[:half])
        self.emitted += half
        self.buffer = np.concatenate([buffer[half:], self.mixing.train.rows(self.taken, self.taken + half)])
        self.taken += half


class RowsReady:
    """Waits for an ExtractionStream's rows, checking should_stop while it waits (False: stop)."""

    def __init__(self, stream, should_stop, interval_s: float):
        self.stream, self.should_stop, self.interval_s = stream, should_stop, max(interval_s, 0.05)

    def __call__(self, n_rows: int) -> bool:
        if self.stream is None:
            return True
        while not self.stream.wait(n_rows, timeout=self.interval_s):
            if self.should_stop is not None and self.should_stop():
                return False
        return True


def finished(stream):
    """The stream's complete file, mapped read-only (its rows were checked as they were written)."""
    return np.load(stream.result().path, mmap_mode="r")
