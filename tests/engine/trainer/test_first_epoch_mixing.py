"""The first epoch's order over rows in extraction order (engine.trainer.ordering.Mixing) is held per
sequence and computed as it is read, and is the order a whole-array shuffle buffer gives: the
buffer's steps written out below over row arrays, as the trainer computed them before."""
import numpy as np
import pytest
import torch

from engine.activations.cache import RowRanges
from engine.trainer.ordering import Mixing


def whole_order(arrival, n_train, buffer_rows, generator):
    """The shuffle buffer over an array of every arrival: the specification."""
    rows = arrival[arrival < n_train]
    half = max(1, min(buffer_rows, n_train) // 2)
    out, buffer, taken, written = np.empty(len(rows), dtype=np.int64), rows[: 2 * half], 2 * half, 0
    while True:
        buffer = buffer[torch.randperm(len(buffer), generator=generator).numpy()]
        if taken >= len(rows):
            out[written:] = buffer
            return out
        out[written : written + half] = buffer[:half]
        written += half
        buffer = np.concatenate([buffer[half:], rows[taken : taken + half]])
        taken += half


def whole_needed(arrival, n_train, buffer_rows, batch_tokens, batch_index):
    arrived_with = np.flatnonzero(arrival < n_train) + 1
    half = max(1, min(buffer_rows, n_train) // 2)
    last = min(n_train, (batch_index + 1) * batch_tokens) - 1
    return int(arrived_with[min(n_train, 2 * half + (last // half) * half) - 1])


def arrival_of(n_rows, seed):
    """Sequences of 1-40 rows in a shuffled order, as an extraction's batches run them."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 40, size=n_rows)
    lengths = lengths[: int(np.searchsorted(np.cumsum(lengths), n_rows)) + 1]
    lengths[-1] -= int(lengths.sum()) - n_rows
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    order = rng.permutation(len(lengths))
    return RowRanges(starts[order], lengths[order])


@pytest.mark.parametrize("n_rows, n_train, buffer_rows, batch", [
    (1000, 950, 256, 64), (1000, 950, 4096, 64), (5003, 4753, 1000, 37), (200, 190, 3, 8), (64, 1, 16, 1),
])
def test_the_order_read_batch_by_batch_is_the_whole_buffer_order(n_rows, n_train, buffer_rows, batch):
    arrival = arrival_of(n_rows, n_rows + buffer_rows)
    rows = arrival.rows()
    mixing = Mixing(arrival, n_rows=n_rows, n_train=n_train, buffer_rows=buffer_rows, batch_tokens=batch)
    lazy, eager = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    order = mixing.order(lazy)
    read = np.concatenate([order[s : s + batch].numpy() for s in range(0, n_train, batch)])
    assert np.array_equal(read, whole_order(rows, n_train, buffer_rows, eager))
    # Read to its end, the generator is where the whole order left it: the next epoch's order follows.
    assert torch.equal(lazy.get_state(), eager.get_state())
    for b in range(0, -(-n_train // batch)):
        assert mixing.needed(b) == whole_needed(rows, n_train, buffer_rows, batch, b)
    assert np.array_equal(mixing.arrival.rows(0, mixing.first_fill), rows[: mixing.first_fill])


def test_a_resumed_epoch_reads_on_from_its_step_and_never_back():
    arrival = arrival_of(3000, 1)
    mixing = Mixing(arrival, n_rows=3000, n_train=2850, buffer_rows=512, batch_tokens=100)
    expected = whole_order(arrival.rows(), 2850, 512, torch.Generator().manual_seed(0))
    order = mixing.order(torch.Generator().manual_seed(0))
    assert np.array_equal(order[1700:1800].numpy(), expected[1700:1800])
    assert np.array_equal(order[2800:2900].numpy(), expected[2800:2850])
    with pytest.raises(Exception, match="front to back"):
        order[0:100]


def test_an_array_of_rows_is_taken_and_the_arrival_must_list_every_row_once():
    rows = np.array([5, 6, 7, 0, 1, 2, 3, 4, 9, 8])
    ranges = RowRanges.of_rows(rows)
    assert ranges.starts.tolist() == [5, 0, 9, 8] and ranges.lengths.tolist() == [3, 5, 1, 1]
    assert np.array_equal(ranges.rows(), rows) and np.array_equal(ranges.rows(2, 7), rows[2:7])
    Mixing(rows, n_rows=10, n_train=9, buffer_rows=4, batch_tokens=2)
    for wrong in ([0, 1, 2, 2, 4, 5, 6, 7, 8, 9], [0, 1, 2, 3], list(range(11))):
        with pytest.raises(Exception, match="once"):
            Mixing(np.array(wrong), n_rows=10, n_train=9, buffer_rows=4, batch_tokens=2)


def test_a_billion_rows_arriving_in_long_sequences_cost_memory_per_sequence():
    n_sequences, length = 1_000_000, 1000  # 10^9 rows
    starts = np.arange(n_sequences, dtype=np.int64) * length
    order = np.random.default_rng(0).permutation(n_sequences)
    arrival = RowRanges(starts[order], np.full(n_sequences, length))
    mixing = Mixing(arrival, n_rows=10**9, n_train=10**9 - 100_000, buffer_rows=65_536, batch_tokens=4096)
    first = mixing.order(torch.Generator().manual_seed(0))[0:4096]
    assert len(first) == 4096 and len(set(first.tolist())) == 4096
    assert mixing.needed(0) == mixing.first_fill


def test_an_order_drained_after_a_partial_read_leaves_the_generator_where_the_whole_order_does():
    arrival = arrival_of(2000, 7)
    mixing = Mixing(arrival, n_rows=2000, n_train=1901, buffer_rows=256, batch_tokens=64)
    whole, part = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    whole_order(arrival.rows(), 1901, 256, whole)
    order = mixing.order(part)
    order[0:500]
    assert not torch.equal(part.get_state(), whole.get_state())
    order.drain()
    assert torch.equal(part.get_state(), whole.get_state())
