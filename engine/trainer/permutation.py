"""An epoch's random order over a cache's training rows, computed a batch at a time instead of held:
a keyed pseudorandom permutation of [0, n) (a balanced Feistel network on the bits of a power of
four at least n, walked until it lands below n), so an epoch over 10^9 rows costs a few integers
of memory where torch.randperm held 8 bytes a row.

The keys come from the run's generator, so the generator's state before an epoch (a checkpoint's
epoch_rng_state) still decides its whole order, and every rank of a data-parallel group draws the
same one. Checkpoints written before this order existed resume with torch.randperm (RANDPERM)."""
import numpy as np
import torch

FEISTEL = "feistel"
RANDPERM = "randperm"  # the order of checkpoints that do not name theirs

_ROUNDS = 4
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def epoch_order(kind: str, n: int, generator: torch.Generator):
    """The epoch's order: sliced as order[a:b], a tensor of int64 row indices."""
    if kind == RANDPERM:
        return torch.randperm(n, generator=generator)
    return Permutation(n, generator)


class Permutation:
    def __init__(self, n: int, generator: torch.Generator):
        if n < 1:
            raise ValueError("a permutation of no rows")
        self.n = int(n)
        bits = max(2, (self.n - 1).bit_length())
        self.half = (bits + 1) // 2
        self.mask = np.uint64((1 << self.half) - 1)
        keys = torch.randint(0, 2**62, (_ROUNDS,), generator=generator, dtype=torch.int64)
        self.keys = [np.uint64(k) for k in keys.tolist()]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, positions: slice) -> torch.Tensor:
        start, stop, step = positions.indices(self.n)
        if step != 1:
            raise ValueError("an epoch's order is read in runs of consecutive positions")
        return torch.from_numpy(self.at(np.arange(start, stop, dtype=np.uint64)).astype(np.int64))

    def at(self, positions: np.ndarray) -> np.ndarray:
        """The rows at these positions of the order (uint64)."""
        out = self._feistel(positions)
        # Cycle-walking: a value past n is permuted again until it lands below n, which keeps the
        # map a bijection of [0, n). The domain is under 4n, so a few walks at most on average.
        outside = out >= self.n
        while outside.any():
            out[outside] = self._feistel(out[outside])
            outside = out >= self.n
        return out

    def _feistel(self, values: np.ndarray) -> np.ndarray:
        half = np.uint64(self.half)
        left, right = values >> half, values & self.mask
        for key in self.keys:
            left, right = right, left ^ (_mix(right ^ key) & self.mask)
        return (left << half) | right


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit reaches every output bit."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))
