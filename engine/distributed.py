"""Data-parallel SAE training over several processes (torch.distributed, DistributedDataParallel),
and the hand-off of a run's result from rank 0 to the process that finishes the job.

`engine.trainer.train_sae(..., distributed=True)` runs in every process of an initialised process group. Every
rank draws the same epoch order (the same seeded generator) and takes rows r::world of each
batch, so together they train on exactly the batch one process would. Each rank's loss is a mean
over its shard, and DistributedDataParallel averages the gradients over ranks: with shards of equal
size that is the gradient of the whole batch's mean, so batches are kept at a multiple of the world
size. What every rank must agree on (the dead-feature mask, the reported sums, when to stop, the
decode path, resampled directions, the input scale) is reduced or broadcast here; the weights stay
identical because every rank applies the same averaged gradient.

Equal to one process up to float rounding for per-token losses (relu without resampling, topk,
jumprelu without target_l0, gated). BatchTopK keeps the k*B largest activations of each rank's shard and a
target-L0 penalty squares each shard's L0, so those train slightly differently from one process;
relu resampling picks its inputs from rank 0's shard.
"""
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from engine.errors import ActivationsError, EngineError
from engine.files import AtomicFile
from engine.sae import sae_from_state_dict
from engine.results import CheckpointInfo, TrainResult


@dataclass
class DataParallel:
    """This process's place in the group, and the collectives the trainer needs."""

    rank: int
    world: int
    device: str

    @classmethod
    def current(cls, device: str) -> "DataParallel":
        if not (dist.is_available() and dist.is_initialized()):
            raise EngineError("distributed=True needs an initialised torch.distributed process group")
        return cls(rank=dist.get_rank(), world=dist.get_world_size(), device=str(device))

    def batch_tokens(self, batch_tokens: int, n_tokens: int) -> int:
        """The global batch, cut to a multiple of the world size so every shard is the same size."""
        if n_tokens < self.world:
            raise ActivationsError(f"{n_tokens} training rows cannot be shared among {self.world} processes")
        return max(self.world, batch_tokens - batch_tokens % self.world)

    def steps_per_epoch(self, n_tokens: int, batch_tokens: int) -> int:
        """An epoch's last, partial batch is cut to a multiple of the world size; a tail smaller
        than the world size is left out of that epoch (the next epoch's order differs)."""
        full, tail = divmod(n_tokens, batch_tokens)
        return full + int(tail >= self.world)

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        usable = len(indices) - len(indices) % self.world
        return indices[:usable][self.rank :: self.world]

    def wrap(self, module: torch.nn.Module) -> DistributedDataParallel:
        device = torch.device(self.device)
        # Buffers (BatchTopK's threshold) follow rank 0 at every forward (broadcast_buffers).
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)

    def broadcast_(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.broadcast(tensor, src=0)
        return tensor

    def broadcast_float(self, value: float) -> float:
        return float(self.broadcast_(torch.tensor([value], dtype=torch.float64, device=self.device)).item())

    def broadcast_choice(self, choice: str, choices: tuple[str, ...]) -> str:
        index = torch.tensor([choices.index(choice)], device=self.device)
        return choices[int(self.broadcast_(index).item())]

    def all_reduce_step(self, scalars: list[torch.Tensor], row_sum: torch.Tensor, fired: torch.Tensor):
        """One all-reduce per step: the sums of `scalars` and `row_sum` over ranks (float64), and
        the features that fired on any rank."""
        packed = torch.cat([
            torch.stack([s.detach().to(self.device, torch.float64).reshape(()) for s in scalars]),
            row_sum.detach().to(torch.float64),
            fired.to(torch.float64),
        ])
        dist.all_reduce(packed)
        n, d = len(scalars), row_sum.numel()
        return packed[:n], packed[n : n + d], packed[n + d :] > 0


def save_result(result: TrainResult, path: Path) -> None:
    """Write a TrainResult as plain tensors, numbers and strings (torch.load(weights_only=True)
    reads it), so the process that finishes a job can take over from the ranks that trained it."""
    special = {"sae", "checkpoints", "tokens_since_fired", "heldout_rows"}
    payload = {
        "fields": {f.name: getattr(result, f.name) for f in fields(result) if f.name not in special},
        "sae": {k: v.detach().cpu() for k, v in result.sae.state_dict().items()},
        "options": result.sae.kind.options(result.sae),  # what rebuilds its architecture (k, ...)
        "checkpoints": [[str(c.path), c.epoch, c.step] for c in result.checkpoints],
        "tokens_since_fired": None if result.tokens_since_fired is None else torch.from_numpy(result.tokens_since_fired),
        "heldout_rows": None if result.heldout_rows is None else list(result.heldout_rows),
    }
    with AtomicFile(path) as partial:
        torch.save(payload, partial)


def load_result(path: Path) -> TrainResult:
    saved = torch.load(Path(path), map_location="cpu", weights_only=True)
    values = saved["fields"]
    sae = sae_from_state_dict(saved["sae"], architecture=values["architecture"], **saved["options"]).eval()
    counters = saved["tokens_since_fired"]
    return TrainResult(
        **values,
        sae=sae,
        checkpoints=[CheckpointInfo(path=Path(p), epoch=int(e), step=int(s)) for p, e, s in saved["checkpoints"]],
        tokens_since_fired=None if counters is None else np.asarray(counters.numpy(), dtype=np.int64),
        heldout_rows=None if saved["heldout_rows"] is None else tuple(saved["heldout_rows"]),
    )


def exit_rank() -> None:
    """End a rank whose work is done and saved and whose group is destroyed, without the
    interpreter's teardown: under CPU load a gloo rank was seen aborting there ("terminate called
    without an active exception", SIGABRT) after a finished run, which failed the job (torchrun
    ranks) or the spawning test (torch.multiprocessing.spawn ranks)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
