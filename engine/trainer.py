"""Training a ReLU sparse autoencoder on stored activations.

Recipe (Anthropic, "Circuits Updates - April 2024", with the simplifications noted inline):
- inputs are multiplied by one fixed scalar so their mean L2 norm is sqrt(d_in), which makes the
  sparsity coefficient mean roughly the same thing for every model and layer;
- loss = MSE (mean over elements) + sparsity_coeff * mean_tokens(sum_i f_i * ||W_dec,i||);
  the decoder-norm-weighted L1 removes the incentive to shrink f by growing W_dec, so decoder
  rows are NOT renormalised (the other consistent recipe, unit-norm rows with a plain L1, is
  Bricken et al. 2023; we do not mix the two);
- Adam, gradient-norm clipping at 1.0;
- each epoch is one pass over all tokens in a fresh random order.
"""

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import ActivationsError, EngineError
from engine.sae import SparseAutoencoder

_SCALE_SAMPLE_TOKENS = 8192
_GRAD_CLIP_NORM = 1.0
_CONVERGENCE_TOLERANCE = 0.01


@dataclass
class TrainConfig:
    hidden_dim: int = 1024
    sparsity_coeff: float = 1e-3
    learning_rate: float = 1e-4
    sae_batch_tokens: int = 4096
    max_epochs: int = 50
    min_loss: float = 0.01
    seed: int = 0
    checkpoint_every_epochs: int = 10
    checkpoint_interval_s: float = 300.0
    progress_interval_s: float = 1.0
    # should_stop() may query a database, so it is called at most this often (and on the first step).
    stop_check_interval_s: float = 0.5


@dataclass
class TrainProgress:
    epoch: int  # 1-based, the epoch in progress
    total_epochs: int
    step: int
    total_steps: int
    loss: float  # means over the steps since the previous report
    mse: float
    l1: float
    progress: float  # 0..1 over all planned steps
    eta_s: float | None
    tokens_per_s: float
    elapsed_s: float


@dataclass
class CheckpointInfo:
    path: Path
    epoch: int  # completed epochs
    step: int


@dataclass
class TrainResult:
    sae: SparseAutoencoder  # on the CPU, in the scaled (normalized) input space
    scaling_factor: float
    final_loss: float
    final_mse: float
    total_epochs: int  # completed
    convergence_epoch: int | None
    training_time_seconds: float
    stopped_reason: str  # "max_epochs" | "min_loss" | "cancelled"
    loss_history: list[float] = field(default_factory=list)  # mean loss per completed epoch
    checkpoints: list[CheckpointInfo] = field(default_factory=list)


def train_sae(
    activations: np.ndarray | torch.Tensor,
    config: TrainConfig,
    *,
    device: str = "cpu",
    checkpoint_dir: Path | None = None,
    checkpoint_prefix: str = "sae",
    on_progress: Callable[[TrainProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_checkpoint: Callable[[CheckpointInfo], None] | None = None,
    resume_from: Path | None = None,
) -> TrainResult:
    _check_config(config)
    n_tokens, d_in = _check_activations(activations)
    batch_tokens = min(config.sae_batch_tokens, n_tokens)
    steps_per_epoch = math.ceil(n_tokens / batch_tokens)
    total_steps = steps_per_epoch * config.max_epochs

    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    # A private generator drives init and shuffling, so a checkpoint can restore it exactly.
    generator = torch.Generator().manual_seed(config.seed)
    sae = SparseAutoencoder(d_in, config.hidden_dim)
    state = _RunState()
    if resume_from is None:
        sample = _sample_rows(activations, np.random.default_rng(config.seed))
        state.scaling_factor = _scaling_factor(sample)
        sae.initialize_(sample * state.scaling_factor, generator)
        state.epoch_rng_state = generator.get_state()
    sae.to(device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=config.learning_rate)
    if resume_from is not None:
        _restore(Path(resume_from), sae, optimizer, state, d_in=d_in, hidden_dim=config.hidden_dim)

    run = _Run(
        config=config, sae=sae, optimizer=optimizer, state=state, device=device,
        checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir is not None else None,
        checkpoint_prefix=checkpoint_prefix, on_checkpoint=on_checkpoint,
        total_steps=total_steps,
    )
    stopped_reason = "max_epochs"
    last_stop_check = -math.inf
    while state.epochs_done < config.max_epochs:
        if state.epoch_step == 0:
            state.epoch_rng_state = generator.get_state()
            state.epoch_sums = [0.0, 0.0, 0.0, 0]
        else:  # resuming mid-epoch: redraw this epoch's order and skip the steps already done
            generator.set_state(state.epoch_rng_state)
        order = torch.randperm(n_tokens, generator=generator)

        for batch_index in range(state.epoch_step, steps_per_epoch):
            now = time.monotonic()
            if should_stop is not None and now - last_stop_check >= config.stop_check_interval_s:
                last_stop_check = now
                if should_stop():
                    stopped_reason = "cancelled"
                    break
            indices = order[batch_index * batch_tokens : (batch_index + 1) * batch_tokens]
            x = _read_rows(activations, indices, device) * state.scaling_factor
            run.step(x)
            state.epoch_step = batch_index + 1
            run.maybe_report(on_progress, epoch=state.epochs_done + 1)
        if stopped_reason == "cancelled":
            run.checkpoint(mid_epoch=True)
            break

        loss_sum, mse_sum, _, tokens = state.epoch_sums
        epoch_loss = loss_sum / tokens
        state.loss_history.append(epoch_loss)
        state.last_epoch_mse = mse_sum / tokens
        state.epochs_done += 1
        state.epoch_step = 0
        if (config.checkpoint_every_epochs and state.epochs_done % config.checkpoint_every_epochs == 0) or (
            time.monotonic() - run.last_checkpoint_at >= config.checkpoint_interval_s
        ):
            run.checkpoint(mid_epoch=False)
        if epoch_loss < config.min_loss:
            stopped_reason = "min_loss"
            break

    run.maybe_report(on_progress, epoch=min(state.epochs_done + 1, config.max_epochs), force=True)
    return _result(run, stopped_reason)


@dataclass
class _RunState:
    """Everything a checkpoint must hold to continue exactly where training stopped."""

    scaling_factor: float = 1.0
    step: int = 0
    epochs_done: int = 0
    epoch_step: int = 0  # steps done in the epoch in progress
    epoch_sums: list = field(default_factory=lambda: [0.0, 0.0, 0.0, 0])  # loss, mse, l1 (token-weighted), tokens
    epoch_rng_state: torch.Tensor | None = None  # generator state before this epoch's permutation
    loss_history: list = field(default_factory=list)
    last_epoch_mse: float | None = None


class _Run:
    """One call of train_sae: the optimisation step, progress reports and checkpoint writing."""

    def __init__(self, *, config, sae, optimizer, state, device, checkpoint_dir, checkpoint_prefix, on_checkpoint, total_steps):
        self.config = config
        self.sae = sae
        self.optimizer = optimizer
        self.state = state
        self.device = device
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_prefix = checkpoint_prefix
        self.on_checkpoint = on_checkpoint
        self.total_steps = total_steps
        self.checkpoints: list[CheckpointInfo] = []
        self.started_at = time.monotonic()
        self.last_report_at = self.started_at
        self.last_checkpoint_at = self.started_at
        self.steps_this_run = 0
        self.tokens_this_run = 0
        self.recent = [0.0, 0.0, 0.0, 0]  # loss, mse, l1 sums and tokens since the last report
        self.last_recent_means = (math.nan, math.nan, math.nan)

    def step(self, x: torch.Tensor) -> None:
        recon, f = self.sae(x)
        mse = F.mse_loss(recon, x)
        l1 = self.sae.weighted_l1(f)
        loss = mse + self.config.sparsity_coeff * l1
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # Clipping keeps the occasional outlier batch from knocking Adam's moments off (April 2024 update).
        torch.nn.utils.clip_grad_norm_(self.sae.parameters(), _GRAD_CLIP_NORM)
        self.optimizer.step()

        n = x.shape[0]
        values = (loss.item(), mse.item(), l1.item())
        for sums in (self.state.epoch_sums, self.recent):
            for i, value in enumerate(values):
                sums[i] += value * n
            sums[3] += n
        self.state.step += 1
        self.steps_this_run += 1
        self.tokens_this_run += n

    def maybe_report(self, on_progress, *, epoch: int, force: bool = False) -> None:
        now = time.monotonic()
        if on_progress is None or (not force and now - self.last_report_at < self.config.progress_interval_s):
            return
        loss_sum, mse_sum, l1_sum, tokens = self.recent
        if tokens:
            self.last_recent_means = (loss_sum / tokens, mse_sum / tokens, l1_sum / tokens)
        self.recent = [0.0, 0.0, 0.0, 0]
        self.last_report_at = now
        elapsed = now - self.started_at
        remaining = self.total_steps - self.state.step
        on_progress(
            TrainProgress(
                epoch=epoch,
                total_epochs=self.config.max_epochs,
                step=self.state.step,
                total_steps=self.total_steps,
                loss=self.last_recent_means[0],
                mse=self.last_recent_means[1],
                l1=self.last_recent_means[2],
                progress=min(1.0, self.state.step / self.total_steps),
                eta_s=elapsed / self.steps_this_run * remaining if self.steps_this_run else None,
                tokens_per_s=self.tokens_this_run / elapsed if elapsed > 0 else 0.0,
                elapsed_s=elapsed,
            )
        )

    def checkpoint(self, *, mid_epoch: bool) -> None:
        if self.checkpoint_dir is None:
            return
        state = self.state
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / f"{self.checkpoint_prefix}_checkpoint_{state.epochs_done}.pt"
        # Plain tensors, numbers, strings and lists only, so torch.load(weights_only=True) works.
        payload = {
            "sae": {k: v.detach().cpu() for k, v in self.sae.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "epoch": state.epochs_done,
            "epoch_step": state.epoch_step if mid_epoch else 0,
            "step": state.step,
            "scaling_factor": state.scaling_factor,
            "config": asdict(self.config),
            "loss_history": list(state.loss_history),
            "last_epoch_mse": state.last_epoch_mse,
            "epoch_sums": list(state.epoch_sums),
            "epoch_rng_state": state.epoch_rng_state,
            # Numpy's RNG is only used before the first step (the scaling sample), so it needs no state.
            "torch_rng_state": torch.get_rng_state(),
        }
        partial = path.with_name(path.name + ".partial")
        torch.save(payload, partial)
        partial.replace(path)
        self.last_checkpoint_at = time.monotonic()
        info = CheckpointInfo(path=path, epoch=state.epochs_done, step=state.step)
        self.checkpoints.append(info)
        if self.on_checkpoint is not None:
            self.on_checkpoint(info)


def _result(run: _Run, stopped_reason: str) -> TrainResult:
    state = run.state
    history = state.loss_history
    if history:
        final_loss, final_mse = history[-1], state.last_epoch_mse
    else:  # cancelled inside the first epoch: report what the partial epoch saw
        loss_sum, mse_sum, _, tokens = state.epoch_sums
        final_loss = loss_sum / tokens if tokens else math.nan
        final_mse = mse_sum / tokens if tokens else math.nan
    return TrainResult(
        sae=run.sae.cpu().eval(),
        scaling_factor=state.scaling_factor,
        final_loss=float(final_loss),
        final_mse=float(final_mse),
        total_epochs=state.epochs_done,
        convergence_epoch=_convergence_epoch(history),
        training_time_seconds=time.monotonic() - run.started_at,
        stopped_reason=stopped_reason,
        loss_history=list(history),
        checkpoints=run.checkpoints,
    )


def _convergence_epoch(history: list[float]) -> int | None:
    """First epoch (1-based) whose mean loss is within 1% of the last epoch's: the point after
    which more training stopped paying off."""
    if not history:
        return None
    final = history[-1]
    for epoch, loss in enumerate(history, start=1):
        if abs(loss - final) <= _CONVERGENCE_TOLERANCE * abs(final):
            return epoch
    return len(history)


def _restore(path: Path, sae, optimizer, state: _RunState, *, d_in: int, hidden_dim: int) -> None:
    if not path.is_file():
        raise EngineError(f"Checkpoint '{path.name}' does not exist")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    shape = tuple(saved["sae"]["W_enc"].shape)
    if shape != (d_in, hidden_dim):
        raise EngineError(
            f"Checkpoint '{path.name}' is for an SAE of shape {shape}, not ({d_in}, {hidden_dim}): "
            "resume with the same activations and hidden_dim"
        )
    sae.load_state_dict(saved["sae"])
    optimizer.load_state_dict(saved["optimizer"])
    state.scaling_factor = float(saved["scaling_factor"])
    state.step = int(saved["step"])
    state.epochs_done = int(saved["epoch"])
    state.epoch_step = int(saved["epoch_step"])
    state.epoch_sums = list(saved["epoch_sums"])
    state.epoch_rng_state = saved["epoch_rng_state"]
    state.loss_history = [float(v) for v in saved["loss_history"]]
    state.last_epoch_mse = saved["last_epoch_mse"]
    torch.set_rng_state(saved["torch_rng_state"])


def _check_config(config: TrainConfig) -> None:
    problems = []
    if config.hidden_dim < 1:
        problems.append("hidden_dim must be at least 1")
    if config.sae_batch_tokens < 1:
        problems.append("sae_batch_tokens must be at least 1")
    if config.max_epochs < 1:
        problems.append("max_epochs must be at least 1")
    if not config.learning_rate > 0:
        problems.append("learning_rate must be positive")
    if not config.sparsity_coeff >= 0:
        problems.append("sparsity_coeff must be zero or positive")
    if problems:
        raise EngineError("; ".join(problems))


def _check_activations(activations) -> tuple[int, int]:
    shape = tuple(activations.shape)
    if len(shape) != 2 or shape[0] < 2 or shape[1] < 1:
        raise ActivationsError(f"Activations have shape {shape}: expected 2-D [tokens, d_model] with at least 2 tokens")
    return shape


def _sample_rows(activations, rng: np.random.Generator) -> torch.Tensor:
    n = activations.shape[0]
    indices = torch.from_numpy(rng.choice(n, size=min(n, _SCALE_SAMPLE_TOKENS), replace=False))
    return _read_rows(activations, indices, "cpu")


def _scaling_factor(sample: torch.Tensor) -> float:
    mean_norm = sample.double().norm(dim=1).mean().item()
    if not mean_norm > 0 or not math.isfinite(mean_norm):
        raise ActivationsError("Activations are all zero or not finite: nothing to train on")
    return math.sqrt(sample.shape[1]) / mean_norm


def _read_rows(activations, indices: torch.Tensor, device: str) -> torch.Tensor:
    if isinstance(activations, torch.Tensor):
        return activations[indices.to(activations.device)].to(device, torch.float32)
    # Sorted indices turn a memmap gather into one forward sweep over the file; the order of
    # rows inside a minibatch does not matter to the loss.
    rows = activations[np.sort(indices.numpy())]
    return torch.from_numpy(np.asarray(rows, dtype=np.float32)).to(device)
