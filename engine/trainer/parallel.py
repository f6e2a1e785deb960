"""The trainer's side of data-parallel training (engine.distributed has the group's collectives):
one step's numbers over all ranks, and the forward DistributedDataParallel wraps."""
from typing import NamedTuple

import torch


class BatchTotals(NamedTuple):
    """One step's batch over all ranks: means per token, and sums."""

    losses: dict  # loss, mse, sparsity: means per token
    l0: float
    squared_error: float
    squared_deviation: float
    tokens: int
    fired: torch.Tensor  # [d_sae] bool: fired on some rank
    stop: bool  # some rank asked to stop: every rank stops after this step


class TrainingForward(torch.nn.Module):
    """The trainer's forward as one module call, for DistributedDataParallel to wrap: its state
    dict is the SAE's under "sae.", and checkpoints keep saving the SAE itself."""

    def __init__(self, sae, forward):
        super().__init__()
        self.sae = sae
        self._run_forward = forward

    def forward(self, x, y, path):
        return self._run_forward(x, y, path)


@torch.no_grad()
def reduce_batch(parallel, x, recon, l0, fired, losses: dict, *, stop_wanted: bool) -> BatchTotals:
    """The whole batch's numbers: each rank's means are over equal shards, so their mean over
    ranks is the batch's. Also settles whether every rank stops after this step."""
    world = parallel.world
    x64 = x.double()
    names = tuple(losses)
    sums, row_sum, fired_anywhere = parallel.all_reduce_step(
        [*losses.values(), l0, ((x - recon) ** 2).sum(), x64.square().sum(), torch.tensor(float(stop_wanted))],
        x64.sum(dim=0), fired,
    )
    tokens = x.shape[0] * world
    squared_deviation = sums[len(names) + 2] - row_sum.square().sum() / tokens  # sum of squares about the batch mean
    values = sums.tolist()
    means = {name: value / world for name, value in zip(names, values)}
    l0_sum, squared_error, _, stop = values[len(names):]
    return BatchTotals(means, l0_sum / world, squared_error, float(squared_deviation), tokens, fired_anywhere, stop > 0)
