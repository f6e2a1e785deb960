"""The first epoch over rows in extraction order: a shuffle buffer over arriving rows, and waiting
for rows an extraction still writes."""
import numpy as np
import torch

from engine.errors import EngineError


class Mixing:
    """The first epoch's order over rows arriving in extraction order: a buffer of `buffer_rows`
    training rows is shuffled, its first half emitted, the next half of the arrivals added, and so on
    (the last fill emitted whole). Each batch therefore needs only the rows that arrived before it,
    and which ones is a fixed function of the arrival order and the generator."""

    def __init__(self, arrival: np.ndarray, *, n_rows: int, n_train: int, buffer_rows: int, batch_tokens: int):
        if len(arrival) != n_rows or not np.array_equal(np.sort(arrival), np.arange(n_rows)):
            raise EngineError(f"The extraction order does not list each of the {n_rows} activation rows once")
        self.arrival = arrival
        is_train = arrival < n_train
        self.train_arrival = arrival[is_train]
        # Arrivals (held-out rows included) up to and including the i-th training row.
        self.arrived_with = np.flatnonzero(is_train) + 1
        self.half = max(1, min(buffer_rows, n_train) // 2)
        self.batch_tokens = batch_tokens
        self.first_fill = int(self.arrived_with[min(n_train, 2 * self.half) - 1])

    def order(self, generator: torch.Generator) -> np.ndarray:
        rows, half = self.train_arrival, self.half
        n = len(rows)
        out = np.empty(n, dtype=np.int64)
        buffer, taken, written = rows[: 2 * half], 2 * half, 0
        while True:
            buffer = buffer[torch.randperm(len(buffer), generator=generator).numpy()]
            if taken >= n:
                out[written:] = buffer
                return out
            out[written : written + half] = buffer[:half]
            written += half
            buffer = np.concatenate([buffer[half:], rows[taken : taken + half]])
            taken += half

    def needed(self, batch_index: int) -> int:
        """Rows of the arrival order that must be written before batch `batch_index` can run."""
        n = len(self.train_arrival)
        last = min(n, (batch_index + 1) * self.batch_tokens) - 1
        train_rows = min(n, 2 * self.half + (last // self.half) * self.half)
        return int(self.arrived_with[train_rows - 1])


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
