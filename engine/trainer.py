"""Training a sparse autoencoder (relu, topk, batchtopk or jumprelu; see engine.sae) on stored activations.

Recipe, shared by every architecture unless noted (sources inline):
- the last `eval_fraction` of the rows (a contiguous tail, at least 1, at most 100k) is held out
  for engine.evaluate and never trained on;
- inputs are multiplied by one fixed scalar so their mean L2 norm is sqrt(d_in) (Anthropic,
  "Circuits Updates - April 2024"; SAELens' normalize_activations="expected_average_only_in"), which
  makes the sparsity coefficient mean roughly the same thing for every model and layer; the
  scalar is folded back into the saved weights (engine.export);
- b_dec starts at the geometric median of a sample, W_enc at W_dec.T;
- loss = MSE (mean over elements) + the architecture's sparsity term (relu: decoder-norm-weighted
  L1, jumprelu: L0 or a target-L0 penalty, topk/batchtopk: none, plus the AuxK loss);
- relu keeps free decoder norms (the weighted L1 removes the incentive to shrink f by growing
  W_dec; Anthropic, "Circuits Updates - April 2024"); the others keep decoder rows at unit norm;
- Adam with linear LR warm-up and a linear decay to 0 over the last steps, sparsity-penalty
  warm-up, gradient-norm clipping at 1.0;
- per-feature "tokens since last fired" counters define dead features: topk/batchtopk revive them
  through AuxK, relu resamples them;
- each epoch is one pass over the training rows in a fresh random order; where the rows come
  from an extraction (its arrival order known), the first epoch instead draws them through a
  shuffle buffer in the order extraction writes them, so it can start before extraction ends
  (`ExtractionStream`) and still be the same run when repeated from the finished cache.

With `distributed=True` every process of a torch.distributed group trains its share of each batch
(data parallel; engine.distributed says how the ranks stay in step).
"""

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from engine.devices import CPU_BF16_CHOICES, cpu_uses_bf16
from engine.errors import ActivationsError, EngineError, ExtractionCancelled, TrainingDiverged
from engine.activation_source import ActivationSource, float_tensor, read_rows
from engine.results import CheckpointInfo, TrainProgress, TrainResult
from engine.sae import ARCHITECTURES, build_sae

_SCALE_SAMPLE_TOKENS = 8192
_GRAD_CLIP_NORM = 1.0
_CONVERGENCE_TOLERANCE = 0.01
_MAX_EVAL_ROWS = 100_000
# A feature silent for this many tokens is dead (Gao et al. 2024 use 10M tokens); shorter runs use
# one pass over the training rows instead.
_DEFAULT_DEAD_WINDOW_TOKENS = 10_000_000
# The smallest SAE batch that min_steps may shrink to: below this a step is mostly noise.
_MIN_BATCH_TOKENS = 64
_GEOMETRIC_MEDIAN_ITERATIONS = 20
# Bricken et al. 2023 resample dead neurons with encoder rows at 0.2x the mean live encoder norm.
_RESAMPLE_ENCODER_SCALE = 0.2
_DECODE_PATHS = ("dense", "sparse")
# sparsity_coeff × this = λ in the summed-squared-error convention (see _sparsity_weight).
_LAMBDA_PER_SPARSITY_COEFF = 2000.0


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
    architecture: str = "relu"  # one of engine.sae.ARCHITECTURES
    k: int | None = None  # active features per token, topk and batchtopk only
    target_l0: float | None = None  # jumprelu: penalise (L0/target - 1)^2 instead of L0
    jumprelu_bandwidth: float = 0.05  # STE rectangle kernel width, in scaled-input units
    jumprelu_initial_threshold: float = 0.1  # Anthropic Jan 2025; Gemma Scope 0.001 needs far longer runs
    lr_warmup_fraction: float = 0.01  # of all steps, linear warm-up from 0
    lr_decay_fraction: float = 0.2  # of all steps, linear decay to 0 at the end
    sparsity_warmup_fraction: float = 0.05  # of all steps, relu and jumprelu penalty ramps from 0
    aux_k_coeff: float = 1 / 32  # topk/batchtopk AuxK loss weight (Gao et al. 2024)
    aux_k: int | None = None  # dead latents AuxK may use per token; default d_in // 2
    dead_window_tokens: int | None = None  # default min(10M, training rows)
    resample_dead: bool = True  # relu: resample features dead for dead_window_tokens
    eval_fraction: float = 0.05  # held-out tail of the rows, at least 1 and at most 100k rows
    # Fewest optimizer steps a run should take; 0 = off. A small corpus at a large sae_batch_tokens
    # gives a handful of steps per epoch, and an SAE barely leaves its initialisation in a hundred
    # Adam steps, so the batch shrinks (sae_batch_tokens is then a maximum) until the run has them.
    min_steps: int = 0
    # With min_steps on, a run also takes at least min_update_travel / learning_rate steps. An Adam
    # step moves each parameter by about the learning rate, and in the scaled input space (norm
    # sqrt(d_in)) pre-activations are O(1), so the encoder biases a ReLU SAE needs to turn sparse
    # (and JumpReLU's thresholds) must travel ~0.5: at the seed's 1e-4 that is 5,000 steps, where a
    # thousand left the bundled model's relu SAE dense (L0 395 of 1024; README, "Architectures").
    min_update_travel: float = 0.5
    # Activations larger than this are streamed from their memory-mapped cache instead of loaded
    # into RAM; None loads them whole.
    ram_budget_bytes: int | None = None
    # TopK decoding: "auto" times a dense matmul against a sparse gather on the first batch.
    decode_path: str = "auto"
    # CPU precision (engine.devices.cpu_uses_bf16): "on" runs the SAE's matmuls under bf16 autocast
    # (float32 master weights and Adam state, as on a GPU), "auto" does so where the CPU has hardware
    # bf16. The engine defaults to float32; the service's default is MISTUDIO_CPU_BF16=auto.
    cpu_bf16: str = "off"
    # First epoch over rows in extraction order (first_epoch_rows): rows a shuffle buffer of this
    # many holds; it emits a random half and refills (the scheme of SAELens' mixing buffer). The
    # first step waits for this many rows, which also give the input scale and b_dec's start.
    shuffle_buffer_tokens: int = 65536


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
    distributed: bool = False,
    first_epoch_rows: np.ndarray | None = None,
) -> TrainResult:
    """`activations`: an array or tensor [rows, d_in], or an engine.activations.ExtractionStream
    still being written, whose rows the first epoch consumes as they arrive.

    `first_epoch_rows`: the order in which the rows were extracted (an ExtractionStream's
    `arrival`, or engine.activations.load_arrival_rows of its finished file). The first epoch then
    draws them through a shuffle buffer in that order, which a run overlapping extraction must do;
    giving the same order for the finished file repeats that run exactly. When resuming, the
    checkpoint decides: the order is used if its run used one (and then must be given).

    With `distributed`, call this in every rank of an initialised process group with the same
    activations and config; only rank 0 writes checkpoints, so give callbacks to rank 0 alone
    (should_stop may be given to any rank: all stop after the same step)."""
    _check_config(config)
    stream = None
    if hasattr(activations, "wait") and hasattr(activations, "arrival"):
        stream, activations = activations, activations.array
        first_epoch_rows = stream.arrival
        if resume_from is not None or distributed:
            raise EngineError("Resume or distributed training reads a finished activations file, not an extraction in progress")
    n_rows, d_in = _check_activations(activations)
    n_eval = _eval_rows(n_rows, config.eval_fraction)
    n_tokens = n_rows - n_eval  # rows [0, n_tokens) train; the tail is held out
    # A resumed run keeps the batch and penalty weight its checkpoint was trained with, even when
    # it was written by an older version that chose them by other rules.
    saved = _load_checkpoint(Path(resume_from)) if resume_from is not None else None
    batch_tokens, sparsity_weight = _run_constants(config, n_tokens, d_in, saved)
    run_batch_tokens = batch_tokens  # before a data-parallel group rounds it; what a checkpoint keeps
    steps_per_epoch = math.ceil(n_tokens / batch_tokens)
    parallel = None
    if distributed:
        from engine.distributed import DataParallel

        parallel = DataParallel.current(device)
        batch_tokens = parallel.batch_tokens(batch_tokens, n_tokens)
        steps_per_epoch = parallel.steps_per_epoch(n_tokens, batch_tokens)
    total_steps = steps_per_epoch * config.max_epochs
    mixing = None
    if first_epoch_rows is not None:
        mixing = _Mixing(np.asarray(first_epoch_rows, dtype=np.int64), n_rows=n_rows, n_train=n_tokens,
                         buffer_rows=config.shuffle_buffer_tokens, batch_tokens=batch_tokens)
    rows_ready = _RowsReady(stream, should_stop, config.stop_check_interval_s)

    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    # A private generator drives init and shuffling, so a checkpoint can restore it exactly.
    generator = torch.Generator().manual_seed(config.seed)
    sae = build_sae(
        config.architecture, d_in, config.hidden_dim, k=config.k,
        jumprelu_initial_threshold=config.jumprelu_initial_threshold, jumprelu_bandwidth=config.jumprelu_bandwidth,
    )
    state = _RunState(batch_tokens=run_batch_tokens, sparsity_weight=sparsity_weight)
    state.tokens_since_fired = torch.zeros(config.hidden_dim, dtype=torch.int64)
    if resume_from is None:
        # The input scale is a fixed preprocessing constant, shared by training and evaluation, so
        # it comes from all rows; weights only ever see the training rows.
        if mixing is None:
            sample = _sample_rows(activations, n_rows, np.random.default_rng(config.seed))
        else:
            # The rows the first step waits for anyway: the buffer's first fill.
            window = mixing.arrival[: mixing.first_fill]
            if not rows_ready(len(window)):
                raise ExtractionCancelled("Activation extraction was cancelled")
            picked = np.random.default_rng(config.seed).choice(window, size=min(len(window), _SCALE_SAMPLE_TOKENS), replace=False)
            sample = _read_rows(activations, torch.from_numpy(picked), "cpu", mapped=stream is not None)
        state.scaling_factor = _scaling_factor(sample)
        scaled = sample * state.scaling_factor
        sae.initialize_(scaled, generator, b_dec=_geometric_median(scaled))
        state.epoch_rng_state = generator.get_state()
    sae.to(device).train()
    state.tokens_since_fired = state.tokens_since_fired.to(device)
    on_cuda = str(device).startswith("cuda")
    if on_cuda:
        # TF32 matmuls for whatever runs outside autocast (ample for SAE training; Ampere and later).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # The fused kernel does Adam's whole update in one launch on CUDA; the CPU keeps the default.
    optimizer = torch.optim.Adam(_param_groups(sae, config, total_steps), lr=config.learning_rate,
                                 fused=True)
    state.first_epoch_mixed = mixing is not None
    if resume_from is not None:
        _restore(saved, Path(resume_from).name, sae, optimizer, state, d_in=d_in, config=config)
        del saved  # the SAE and optimizer hold what they need of it; drop the rest for the run
        state.tokens_since_fired = state.tokens_since_fired.to(device)
        # The checkpoint says how its first epoch drew rows; a resume repeats that.
        if state.epochs_done == 0 and state.first_epoch_mixed and mixing is None:
            raise EngineError(
                "This checkpoint's first epoch followed the extraction order, which these activations do not "
                "have (their _arrival.npy is missing): resume from the activations it was trained on"
            )
        if not state.first_epoch_mixed:
            mixing = None
    if parallel is not None:
        # Every rank computed the same scale from the same seeded sample; rank 0's makes sure of it
        # (DistributedDataParallel does the same for the weights).
        state.scaling_factor = parallel.broadcast_float(state.scaling_factor)

    run = _Run(
        config=config, sae=sae, optimizer=optimizer, state=state, device=device,
        checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir is not None else None,
        checkpoint_prefix=checkpoint_prefix, on_checkpoint=on_checkpoint,
        total_steps=total_steps,
        dead_window_tokens=config.dead_window_tokens or min(_DEFAULT_DEAD_WINDOW_TOKENS, n_tokens),
        heldout_rows=(n_tokens, n_rows) if n_eval else None,
        batch_tokens=batch_tokens,
        parallel=parallel,
    )
    source = None if stream is not None else ActivationSource(
        activations, n_tokens, ram_budget_bytes=config.ram_budget_bytes, device=device)
    try:
        stopped_reason = "max_epochs"
        last_stop_check = -math.inf
        while state.epochs_done < config.max_epochs:
            # epoch_rng_state is the generator's state before this epoch's permutation, so a run
            # resumed from any checkpoint (an epoch's end or mid-epoch) redraws the same order.
            generator.set_state(state.epoch_rng_state)
            if state.epoch_step == 0:
                state.epoch_sums = [0.0, 0.0, 0.0, 0]
            mixed_epoch = mixing is not None and state.epochs_done == 0
            if mixed_epoch:
                order = torch.from_numpy(mixing.order(generator))
            else:
                if source is None:
                    # Every later epoch reads the finished file (in RAM when it fits the budget).
                    activations = _finished(stream)
                    source = ActivationSource(activations, n_tokens, ram_budget_bytes=config.ram_budget_bytes, device=device)
                order = torch.randperm(n_tokens, generator=generator)

            for batch_index in range(state.epoch_step, steps_per_epoch):
                now = time.monotonic()
                if should_stop is not None and now - last_stop_check >= config.stop_check_interval_s:
                    last_stop_check = now
                    if should_stop():
                        if parallel is None:
                            stopped_reason = "cancelled"
                            break
                        # Ranks must stop after the same step: the wish travels with the next step's reduction.
                        run.stop_wanted = True
                if run.stop_agreed:
                    stopped_reason = "cancelled"
                    break
                indices = order[batch_index * batch_tokens : (batch_index + 1) * batch_tokens]
                if mixed_epoch:
                    # Sorted, so the rows come in one order however they are read.
                    indices = indices.sort().values
                    if not rows_ready(mixing.needed(batch_index)):
                        stopped_reason = "cancelled"
                        break
                if parallel is not None:
                    indices = parallel.shard(indices)
                if source is None:
                    x = _read_rows(activations, indices, device, mapped=True) * state.scaling_factor
                else:
                    x = source.read(indices) * state.scaling_factor
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
            state.epoch_rng_state = generator.get_state()  # the next epoch's order starts here
            if (config.checkpoint_every_epochs and state.epochs_done % config.checkpoint_every_epochs == 0) or (
                time.monotonic() - run.last_checkpoint_at >= config.checkpoint_interval_s
            ):
                run.checkpoint(mid_epoch=False)
            if epoch_loss < config.min_loss:
                stopped_reason = "min_loss"
                break

        run.maybe_report(on_progress, epoch=min(state.epochs_done + 1, config.max_epochs), force=True)
    finally:
        if source is not None:
            source.close()
    return _result(run, stopped_reason)


class _Mixing:
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


class _RowsReady:
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


def _finished(stream):
    """The stream's complete file, mapped read-only (its rows were checked as they were written)."""
    return np.load(stream.result().path, mmap_mode="r")


@dataclass
class _RunState:
    """Everything a checkpoint must hold to continue exactly where training stopped."""

    scaling_factor: float = 1.0
    step: int = 0
    epochs_done: int = 0
    epoch_step: int = 0  # steps done in the epoch in progress
    epoch_sums: list = field(default_factory=lambda: [0.0, 0.0, 0.0, 0])  # loss, mse, l1 (token-weighted), tokens
    epoch_rng_state: torch.Tensor | None = None  # generator state before the permutation of the epoch in progress (or next)
    loss_history: list = field(default_factory=list)
    last_epoch_mse: float | None = None
    tokens_since_fired: torch.Tensor | None = None  # [d_sae] int64, per feature
    resampled_features: int = 0
    decode_path: str | None = None  # chosen on the first step, kept by checkpoints for an exact resume
    first_epoch_mixed: bool = False  # the first epoch followed the extraction order (see _Mixing)
    batch_tokens: int = 0  # tokens per step (_batch_tokens), fixed for the run
    sparsity_weight: float = 0.0  # the sparsity term's weight (_sparsity_weight), fixed for the run


class _Run:
    """One call of train_sae: the optimisation step, progress reports and checkpoint writing."""

    def __init__(self, *, config, sae, optimizer, state, device, checkpoint_dir, checkpoint_prefix, on_checkpoint, total_steps,
                 dead_window_tokens, heldout_rows, batch_tokens, parallel=None):
        self.config = config
        self.sae = sae
        self.optimizer = optimizer
        self.state = state
        self.device = device
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_prefix = checkpoint_prefix
        self.on_checkpoint = on_checkpoint
        self.total_steps = total_steps
        self.dead_window_tokens = int(dead_window_tokens)
        self.heldout_rows = heldout_rows
        self.batch_tokens = batch_tokens
        self.on_cuda = str(device).startswith("cuda")
        # bf16 autocast: matmuls in bf16, weights and Adam state stay fp32 (master weights).
        self.autocast_device = "cuda" if self.on_cuda else "cpu"
        self.autocast = self.on_cuda or cpu_uses_bf16(config.cpu_bf16)
        self.decode_timings_s = {}
        self.checkpoints: list[CheckpointInfo] = []
        self.started_at = time.monotonic()
        self.last_report_at = self.started_at
        self.last_checkpoint_at = self.started_at
        self.steps_this_run = 0
        self.tokens_this_run = 0
        # loss, mse, sparsity, L0 (token-weighted), squared error, squared deviation, tokens since the last report
        self.recent = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0]
        self.last_recent_means = (math.nan,) * 5
        self.parallel = parallel
        # Gradients are averaged over ranks only for what runs inside DistributedDataParallel's forward.
        self.ddp = parallel.wrap(_TrainingForward(sae, self._forward)) if parallel is not None else None
        self.stop_wanted = False  # this rank's should_stop said so
        self.stop_agreed = False  # some rank's did, as of the last step: every rank stops

    def step(self, x: torch.Tensor) -> None:
        sae, config = self.sae, self.config
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * self._lr_factor()
        if self.state.decode_path is None:
            self.state.decode_path = self._choose_decode_path(x)
            if self.parallel is not None:
                # Timings differ between processes; every rank decodes the way rank 0 chose.
                self.state.decode_path = self.parallel.broadcast_choice(self.state.decode_path, _DECODE_PATHS)
        forward = self._forward if self.ddp is None else self.ddp
        pre, f, recon, fired, fired_per_token = forward(x, self.state.decode_path)
        mse = F.mse_loss(recon, x)
        sparsity = sae.sparsity_loss(pre, f, target_l0=config.target_l0)
        loss = mse + self.state.sparsity_weight * self._sparsity_warmup() * sparsity
        if sae.architecture in ("topk", "batchtopk") and config.aux_k_coeff > 0:
            loss = loss + config.aux_k_coeff * self._aux_k_loss(x, recon, pre)
        # Distributed: the whole batch's numbers, reduced before backward so every rank sees the same loss.
        totals = None if self.parallel is None else self._reduce(x, recon, f, fired, fired_per_token, (loss, mse, sparsity))
        if not (torch.isfinite(loss) if totals is None else math.isfinite(totals.loss)):
            raise TrainingDiverged(
                f"The loss became {loss.item() if totals is None else totals.loss} at epoch {self.state.epochs_done + 1}, step {self.state.step + 1}: "
                f"lower learning_rate (now {config.learning_rate:g}) or sparsity_coeff, and check the "
                "activations for extreme values."
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if sae.unit_norm_decoder:
            sae.remove_parallel_grad_()
        # Clipping keeps the occasional outlier batch from knocking Adam's moments off (April 2024 update).
        torch.nn.utils.clip_grad_norm_(sae.parameters(), _GRAD_CLIP_NORM)
        self.optimizer.step()
        if sae.unit_norm_decoder:
            sae.normalize_decoder_()

        n = x.shape[0] if totals is None else totals.tokens
        if totals is not None:
            fired = totals.fired
        with torch.no_grad():
            counters = self.state.tokens_since_fired
            counters += n
            counters[fired] = 0
        if sae.architecture == "relu" and config.resample_dead and self.state.step < self.total_steps // 2:
            self._resample_dead(x, recon.detach())

        if totals is None:
            with torch.no_grad():
                l0 = (fired_per_token if f is None else (f > 0).sum(dim=1)).float().mean()
                squared_error = ((x - recon) ** 2).sum()
                squared_deviation = ((x - x.mean(dim=0)) ** 2).sum()
            values = (loss.item(), mse.item(), sparsity.item())
            l0, squared_error, squared_deviation = l0.item(), squared_error.item(), squared_deviation.item()
        else:
            values = (totals.loss, totals.mse, totals.sparsity)
            l0, squared_error, squared_deviation = totals.l0, totals.squared_error, totals.squared_deviation
        epoch_sums = self.state.epoch_sums
        for i, value in enumerate(values):
            epoch_sums[i] += value * n
        epoch_sums[3] += n
        recent = self.recent
        for i, value in enumerate((*values, l0)):
            recent[i] += value * n
        recent[4] += squared_error
        recent[5] += squared_deviation
        recent[6] += n
        self.state.step += 1
        self.steps_this_run += 1
        self.tokens_this_run += n

    @torch.no_grad()
    def _reduce(self, x, recon, f, fired, fired_per_token, losses) -> "_BatchTotals":
        """The whole batch's numbers: each rank's means are over equal shards, so their mean over
        ranks is the batch's. Also settles whether every rank stops after this step."""
        world = self.parallel.world
        l0 = (fired_per_token if f is None else (f > 0).sum(dim=1)).float().mean()
        x64 = x.double()
        sums, row_sum, fired_anywhere = self.parallel.all_reduce_step(
            [*losses, l0, ((x - recon) ** 2).sum(), x64.square().sum(), torch.tensor(float(self.stop_wanted))],
            x64.sum(dim=0), fired,
        )
        tokens = x.shape[0] * world
        squared_deviation = sums[5] - row_sum.square().sum() / tokens  # sum of squares about the batch mean
        loss, mse, sparsity, l0, squared_error, _, stop = sums.tolist()
        self.stop_agreed = stop > 0
        return _BatchTotals(loss / world, mse / world, sparsity / world, l0 / world, squared_error,
                            float(squared_deviation), tokens, fired_anywhere)

    def _lr_factor(self) -> float:
        """Linear warm-up, then constant, then linear decay to 0 (warm-up: Conerly et al., Anthropic
        "Circuits Updates - April 2024"; final decay over the last 20%: same update and Gao et al. 2024)."""
        step, total = self.state.step, self.total_steps
        factor = 1.0
        warmup = round(self.config.lr_warmup_fraction * total)
        if warmup > 0 and step < warmup:
            factor = (step + 1) / warmup
        decay = round(self.config.lr_decay_fraction * total)
        if decay > 0 and step >= total - decay:
            factor = min(factor, (total - step) / decay)
        return factor

    def _sparsity_warmup(self) -> float:
        """The penalty ramps up from 0 so features form before it prunes them (Anthropic "Circuits
        Updates - April 2024": L1 warm-up over the first 5% of steps; Anthropic Jan 2025 for JumpReLU)."""
        warmup = round(self.config.sparsity_warmup_fraction * self.total_steps)
        return min(1.0, (self.state.step + 1) / warmup) if warmup > 0 else 1.0

    def _dead_mask(self) -> torch.Tensor:
        return self.state.tokens_since_fired >= self.dead_window_tokens

    def _forward(self, x: torch.Tensor, path: str):
        """pre-activations, codes (None on the sparse path), reconstruction, which features fired, and
        (sparse path only; None otherwise) how many fired on each token."""
        sae = self.sae
        with torch.autocast(self.autocast_device, dtype=torch.bfloat16, enabled=self.autocast):
            pre = sae.pre_activations(x)
            if path == "sparse":
                # TopK codes have k non-zeros a token: gather k decoder rows per token (an
                # embedding-bag, forward and backward) instead of a [B, d_sae] @ [d_sae, d_in] matmul.
                values, indices = pre.float().topk(sae.k, dim=-1)
                values = torch.relu(values)
                recon = F.embedding_bag(indices, sae.W_dec, per_sample_weights=values, mode="sum") + sae.b_dec
                fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=x.device)
                fired[indices[values > 0]] = True
                return pre.float(), None, recon.float(), fired, (values > 0).sum(dim=1)
            f = sae.activate(pre)
            recon = sae.decode(f)
        f = f.float()
        return pre.float(), f, recon.float(), (f > 0).any(dim=0), None

    def _choose_decode_path(self, x: torch.Tensor) -> str:
        """Sparse decoding pays off only when d_sae is large against k and the device's gather is
        quick: time both on the first batch (forward and backward, no update) and keep the faster."""
        if self.config.decode_path != "auto":
            return self.config.decode_path
        if self.sae.architecture != "topk":
            return "dense"
        timings = {}
        for path in ("dense", "sparse", "dense", "sparse"):  # the first of each warms up
            started = time.perf_counter()
            _, _, recon, _, _ = self._forward(x, path)
            F.mse_loss(recon, x).backward()
            if self.on_cuda:
                torch.cuda.synchronize()
            timings[path] = time.perf_counter() - started
            self.optimizer.zero_grad(set_to_none=True)
        self.decode_timings_s = timings
        return min(timings, key=timings.get)

    def _aux_k_loss(self, x, recon, pre) -> torch.Tensor:
        """AuxK (Gao et al. 2024, "Scaling and evaluating sparse autoencoders", section A.2):
        reconstruct the main model's residual with the top k_aux dead latents, so dead latents
        get a gradient that points them at what the live ones miss."""
        dead = self._dead_mask()
        n_dead = int(dead.sum().item())
        if n_dead == 0:
            return pre.new_zeros(())
        k_aux = min(self.config.aux_k or max(1, self.sae.d_in // 2), n_dead)
        masked = pre.masked_fill(~dead, -math.inf)
        values, indices = masked.topk(k_aux, dim=-1)
        z_aux = torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))
        residual = (x - recon).detach()
        return F.mse_loss(z_aux @ self.sae.W_dec, residual)

    @torch.no_grad()
    def _resample_dead(self, x: torch.Tensor, recon: torch.Tensor) -> None:
        """Resampling (Bricken et al. 2023, "Towards Monosemanticity"): a feature silent for
        dead_window_tokens gets a decoder row pointing at a badly reconstructed input (drawn with
        probability proportional to its squared loss), an encoder column along it at 0.2x the mean
        live encoder norm, a zero bias and fresh Adam moments. Only in the first half of training,
        so every resampled feature has time to settle."""
        dead = self._dead_mask()
        if not dead.any():
            return
        sae, n_dead = self.sae, int(dead.sum().item())
        if self.parallel is None or self.parallel.rank == 0:
            losses = ((x - recon) ** 2).sum(dim=1) ** 2
            weights = losses if losses.sum() > 0 else torch.ones_like(losses)
            picks = torch.multinomial(weights, n_dead, replacement=True)
            directions = x[picks] - sae.b_dec
            directions /= directions.norm(dim=1, keepdim=True).clamp_min(1e-12)
        else:
            directions = x.new_empty(n_dead, x.shape[1])
        if self.parallel is not None:
            # Rank 0 draws from its shard; the rest of the update below is the same on every rank.
            self.parallel.broadcast_(directions)
        alive = ~dead
        dec_norm = sae.W_dec.norm(dim=1)[alive].mean() if alive.any() else torch.tensor(1.0, device=x.device)
        enc_norm = sae.W_enc.norm(dim=0)[alive].mean() if alive.any() else torch.tensor(1.0, device=x.device)
        sae.W_dec[dead] = directions * dec_norm
        sae.W_enc[:, dead] = directions.T * (_RESAMPLE_ENCODER_SCALE * enc_norm)
        sae.b_enc[dead] = 0.0
        for param in (sae.W_dec, sae.W_enc, sae.b_enc):
            for moment in ("exp_avg", "exp_avg_sq"):
                tensor = self.optimizer.state.get(param, {}).get(moment)
                if tensor is not None:
                    if param is sae.W_enc:
                        tensor[:, dead] = 0.0
                    else:
                        tensor[dead] = 0.0
        self.state.tokens_since_fired[dead] = 0
        self.state.resampled_features += n_dead

    def maybe_report(self, on_progress, *, epoch: int, force: bool = False) -> None:
        now = time.monotonic()
        if on_progress is None or (not force and now - self.last_report_at < self.config.progress_interval_s):
            return
        loss_sum, mse_sum, l1_sum, l0_sum, squared_error, squared_deviation, tokens = self.recent
        if tokens:
            explained = 1.0 - squared_error / squared_deviation if squared_deviation > 0 else math.nan
            self.last_recent_means = (loss_sum / tokens, mse_sum / tokens, l1_sum / tokens, l0_sum / tokens, explained)
        self.recent = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0]
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
                l0=self.last_recent_means[3],
                explained_variance=self.last_recent_means[4],
            )
        )

    def checkpoint(self, *, mid_epoch: bool) -> None:
        if self.checkpoint_dir is None or (self.parallel is not None and self.parallel.rank != 0):
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
            "tokens_since_fired": state.tokens_since_fired.detach().cpu(),
            "resampled_features": state.resampled_features,
            "decode_path": state.decode_path,
            "first_epoch_mixed": state.first_epoch_mixed,
            "batch_tokens": state.batch_tokens,
            "sparsity_weight": state.sparsity_weight,
        }
        partial = path.with_name(path.name + ".partial")
        torch.save(payload, partial)
        partial.replace(path)
        self.last_checkpoint_at = time.monotonic()
        info = CheckpointInfo(path=path, epoch=state.epochs_done, step=state.step)
        self.checkpoints.append(info)
        if self.on_checkpoint is not None:
            self.on_checkpoint(info)


class _BatchTotals(NamedTuple):
    """One step's batch over all ranks (distributed training): means per token, and sums."""

    loss: float
    mse: float
    sparsity: float
    l0: float
    squared_error: float
    squared_deviation: float
    tokens: int
    fired: torch.Tensor  # [d_sae] bool: fired on some rank


class _TrainingForward(torch.nn.Module):
    """The trainer's forward as one module call, for DistributedDataParallel to wrap: its state
    dict is the SAE's under "sae.", and checkpoints keep saving the SAE itself."""

    def __init__(self, sae, forward):
        super().__init__()
        self.sae = sae
        self._run_forward = forward

    def forward(self, x, path):
        return self._run_forward(x, path)


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
        architecture=run.sae.architecture,
        dead_window_tokens=run.dead_window_tokens,
        tokens_since_fired=state.tokens_since_fired.cpu().numpy().copy(),
        heldout_rows=run.heldout_rows,
        resampled_features=state.resampled_features,
        sae_batch_tokens=run.batch_tokens,
        decode_path=state.decode_path or "dense",
        compute_dtype="bfloat16" if run.autocast else "float32",
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


def _load_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise EngineError(f"Checkpoint '{path.name}' does not exist")
    return torch.load(path, map_location="cpu", weights_only=True)


def _restore(saved: dict, name: str, sae, optimizer, state: _RunState, *, d_in: int, config: TrainConfig) -> None:
    shape = tuple(saved["sae"]["W_enc"].shape)
    if shape != (d_in, config.hidden_dim):
        raise EngineError(
            f"Checkpoint '{name}' is for an SAE of shape {shape}, not ({d_in}, {config.hidden_dim}): "
            "resume with the same activations and hidden_dim"
        )
    saved_architecture = saved.get("config", {}).get("architecture", "relu")
    if saved_architecture != config.architecture:
        raise EngineError(
            f"Checkpoint '{name}' is for architecture '{saved_architecture}', not '{config.architecture}'"
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
    if "tokens_since_fired" in saved:
        state.tokens_since_fired = saved["tokens_since_fired"].to(torch.int64)
    state.resampled_features = int(saved.get("resampled_features", 0))
    state.decode_path = saved.get("decode_path")
    state.first_epoch_mixed = bool(saved.get("first_epoch_mixed", False))


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
    if not config.min_update_travel >= 0:
        problems.append("min_update_travel must be zero or positive")
    if not config.sparsity_coeff >= 0:
        problems.append("sparsity_coeff must be zero or positive")
    if config.architecture not in ARCHITECTURES:
        problems.append(f"architecture must be one of {', '.join(ARCHITECTURES)}")
    elif config.architecture in ("topk", "batchtopk") and (config.k is None or config.k < 1):
        problems.append(f"k must be a positive integer for the {config.architecture} architecture")
    if config.target_l0 is not None and not config.target_l0 > 0:
        problems.append("target_l0 must be positive")
    if not 0 <= config.eval_fraction < 1:
        problems.append("eval_fraction must be at least 0 and below 1")
    if config.cpu_bf16 not in CPU_BF16_CHOICES:
        problems.append(f"cpu_bf16 must be one of {', '.join(CPU_BF16_CHOICES)}")
    if config.shuffle_buffer_tokens < 2:
        problems.append("shuffle_buffer_tokens must be at least 2")
    if config.dead_window_tokens is not None and config.dead_window_tokens < 1:
        problems.append("dead_window_tokens must be at least 1")
    if problems:
        raise EngineError("; ".join(problems))


def _check_activations(activations) -> tuple[int, int]:
    shape = tuple(activations.shape)
    if len(shape) != 2 or shape[0] < 2 or shape[1] < 1:
        raise ActivationsError(f"Activations have shape {shape}: expected 2-D [tokens, d_model] with at least 2 tokens")
    return shape


def _run_constants(config: TrainConfig, n_tokens: int, d_in: int, saved: dict | None) -> tuple[int, float]:
    """The run's batch size and sparsity weight: a loaded checkpoint's own, or this version's rules.
    Checkpoints from before the rules changed (no such keys) get the rules they were written
    under: the batch from min_steps alone, and sparsity_coeff as the per-element weight."""
    if saved is None:
        return _batch_tokens(config, n_tokens), _sparsity_weight(config, d_in)
    if "batch_tokens" in saved:
        return int(saved["batch_tokens"]), float(saved["sparsity_weight"])
    weight = _sparsity_weight(config, d_in)
    if not (config.architecture == "jumprelu" and config.target_l0):
        weight = config.sparsity_coeff
    return _batch_tokens(replace(config, min_update_travel=0.0), n_tokens), weight


def _sparsity_weight(config: TrainConfig, d_in: int) -> float:
    """The weight of the architecture's sparsity term beside the MSE (a mean over elements).

    `sparsity_coeff` is λ/2000 in the loss of Anthropic's April 2024 update, ||x - x̂||² summed over
    the d_in dimensions + λ Σ_i f_i ||W_dec,i|| (JumpReLU: + λ L0), with inputs at mean norm
    sqrt(d_in). The trainer minimises that loss divided by d_in, so the reported loss (and min_loss)
    stays a per-element MSE: the weight here is λ / d_in. In that convention one λ asks layers and
    models of every width for about the same trade-off, which is what the input normalisation is
    for. The factor puts the seed's default 0.001 at λ = 2: on the bundled model (d_in 384) λ = 1
    left hundreds of features firing on more than 10% of tokens, λ = 2 a few dozen at L0 ~30-40
    (README, "Architectures"); Anthropic's λ = 5 is for runs of ~100k steps. Before this
    convention sparsity_coeff was the per-element weight itself, 5.2x weaker at d_in 384.

    A target L0 is a constraint, not a trade-off: its penalty (L0/target - 1)^2 has a fixed weight
    of 1 (it held L0 near the target on MiniLM and the synthetic tests), and sparsity_coeff does
    not apply to it."""
    if config.architecture == "jumprelu" and config.target_l0:
        return 1.0
    return config.sparsity_coeff * _LAMBDA_PER_SPARSITY_COEFF / d_in


def _param_groups(sae, config: TrainConfig, total_steps: int) -> list[dict]:
    """JumpReLU thresholds are learned in log space, where an Adam step moves them by about the
    learning rate: at 1e-4 a threshold could not grow tenfold in fewer than ~23k steps. Their own
    rate lets them cross a few e-folds in any run (10 / total steps), and is never below the
    weights' rate, so long runs train them exactly as Gemma Scope does."""
    thresholds = [p for name, p in sae.named_parameters() if name == "log_threshold"]
    weights = [p for name, p in sae.named_parameters() if name != "log_threshold"]
    groups = [{"params": weights, "base_lr": config.learning_rate}]
    if thresholds:
        groups.append({"params": thresholds, "base_lr": max(config.learning_rate, 10.0 / max(total_steps, 1))})
    return groups


def min_steps_for(config: TrainConfig) -> int:
    """The fewest optimizer steps the run should take (TrainConfig.min_steps, min_update_travel); 0 = off."""
    if config.min_steps <= 0:
        return 0
    return max(config.min_steps, math.ceil(config.min_update_travel / config.learning_rate))


def _batch_tokens(config: TrainConfig, n_tokens: int) -> int:
    batch = min(config.sae_batch_tokens, n_tokens)
    min_steps = min_steps_for(config)
    if min_steps > 0:
        steps_per_epoch = math.ceil(min_steps / config.max_epochs)
        batch = min(batch, max(_MIN_BATCH_TOKENS, n_tokens // steps_per_epoch))
    return max(1, batch)


def _eval_rows(n_rows: int, eval_fraction: float) -> int:
    if eval_fraction <= 0:
        return 0
    return min(max(1, round(n_rows * eval_fraction)), _MAX_EVAL_ROWS, n_rows - 1)


def _geometric_median(points: torch.Tensor) -> torch.Tensor:
    """Weiszfeld iterations from the mean; the mean itself if they fail. Bricken et al. 2023
    ("Towards Monosemanticity") start b_dec at the geometric median, which outliers move less."""
    points = points.double()
    mean = points.mean(dim=0)
    median = mean
    for _ in range(_GEOMETRIC_MEDIAN_ITERATIONS):
        weights = 1.0 / (points - median).norm(dim=1).clamp_min(1e-8)
        median = (weights[:, None] * points).sum(dim=0) / weights.sum()
    return (median if torch.isfinite(median).all() else mean).float()


def _sample_rows(activations, n: int, rng: np.random.Generator) -> torch.Tensor:
    indices = torch.from_numpy(rng.choice(n, size=min(n, _SCALE_SAMPLE_TOKENS), replace=False))
    return _read_rows(activations, indices, "cpu")


def _scaling_factor(sample: torch.Tensor) -> float:
    """The scalar that brings the sample's mean L2 norm to sqrt(d_in) (Anthropic, April 2024 update)."""
    mean_norm = sample.double().norm(dim=1).mean().item()
    if not mean_norm > 0 or not math.isfinite(mean_norm):
        raise ActivationsError("Activations are all zero or not finite: nothing to train on")
    return math.sqrt(sample.shape[1]) / mean_norm


def _read_rows(activations, indices: torch.Tensor, device: str, *, mapped: bool = False) -> torch.Tensor:
    """`mapped`: read through the array's own mapping, not by name (a file still being written is
    renamed when it is finished)."""
    if isinstance(activations, torch.Tensor):
        return activations[indices.to(activations.device)].to(device, torch.float32)
    if mapped:
        return float_tensor(activations[np.sort(indices.numpy())], device)
    # Sorted indices turn a memmap gather into one forward sweep over the file; the order of
    # rows inside a minibatch does not matter to the loss.
    return float_tensor(read_rows(activations, np.sort(indices.numpy())), device)
