"""What a cached run (engine.trainer.loop) and a streamed one (engine.trainer.streamed) share: the
layout of a run's rows, batches and steps, its start (fresh or from a checkpoint), its epochs'
loop and end, and its result. Both build on these public functions; neither imports the other's
private names."""
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from engine.activations.source import ActivationSource, rows_tensor
from engine.defaults import eval_rows
from engine.errors import EngineError, ExtractionCancelled
from engine.results import TrainResult
from engine.sae import build_sae
from engine.sae import get as architecture
from engine.trainer import checkpoint, init, plan
from engine.trainer.config import check_activations
from engine.trainer.ordering import Mixing, finished
from engine.trainer.permutation import epoch_order
from engine.trainer.step import Run

_CONVERGENCE_TOLERANCE = 0.01


@dataclass
class Layout:
    """Rows, batches and steps of the run, fixed before its first step."""

    n_rows: int
    n_train: int  # rows [0, n_train) train; the tail is held out
    d_in: int
    run_batch_tokens: int  # what a checkpoint keeps
    batch_tokens: int  # per step, after a data-parallel group rounds it
    sparsity_weight: float
    steps_per_epoch: int
    total_steps: int
    parallel: object | None  # engine.distributed.DataParallel
    mixing: Mixing | None  # the first epoch follows the extraction order
    budget: int | None = None  # tokens the run trains on, when training_tokens ends it before max_epochs
    targets: object | None = None  # the [rows, d_out] the SAE predicts, when not its input rows
    d_out: int | None = None  # the targets' width (None: d_in)

    def budget_left(self, state) -> int | None:
        return None if self.budget is None else self.budget - state.tokens_trained


def run_layout(config, activations, saved, *, device, distributed, first_epoch_rows, targets=None) -> Layout:
    n_rows, d_in = check_activations(activations)
    n_train = n_rows - eval_rows(n_rows, config.eval_fraction)
    # A resumed run keeps the batch and penalty weight its checkpoint was trained with, even when
    # it was written by an older version that chose them by other rules.
    run_batch_tokens, sparsity_weight = plan.run_constants(config, n_train, d_in, saved)
    batch_tokens, steps_per_epoch, parallel = run_batch_tokens, math.ceil(n_train / run_batch_tokens), None
    if distributed:
        from engine.distributed import DataParallel

        parallel = DataParallel.current(device)
        batch_tokens = parallel.batch_tokens(run_batch_tokens, n_train)
        steps_per_epoch = parallel.steps_per_epoch(n_train, batch_tokens)
    mixing = None
    if first_epoch_rows is not None:
        mixing = Mixing(first_epoch_rows, n_rows=n_rows, n_train=n_train,
                        buffer_rows=config.shuffle_buffer_tokens, batch_tokens=batch_tokens)
    return Layout(n_rows, n_train, d_in, run_batch_tokens, batch_tokens, sparsity_weight, steps_per_epoch,
                   plan.total_steps(config, n_train, batch_tokens, steps_per_epoch), parallel, mixing,
                   plan.token_budget(config, n_train), targets, None if targets is None else int(targets.shape[1]))


def _param_groups(sae, config, total_steps: int, saved) -> list[dict]:
    """The architecture's parameter groups; a checkpoint written when its architecture kept every
    parameter in one group (relu and gated before their biases had a rate of their own) resumes
    in one group, at its own rate, as it was trained."""
    groups = architecture(config.architecture).param_groups(sae, config, total_steps)
    if saved is not None and len(saved.payload["optimizer"]["param_groups"]) == 1 < len(groups):
        return [{"params": list(sae.parameters()), "base_lr": config.learning_rate}]
    return groups


def start_run(config, layout: Layout, activations, stream, saved, rows_ready, *, device, sample=None):
    """The SAE, its optimizer and the run state: initialised from a sample (`sample`, or rows the
    activations give), or restored."""
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    # A private generator drives init and shuffling, so a checkpoint can restore it exactly.
    generator = torch.Generator().manual_seed(config.seed)
    sae = build_sae(config.architecture, layout.d_in, config.hidden_dim, d_out=layout.d_out, k=config.k,
                    jumprelu_initial_threshold=config.jumprelu_initial_threshold,
                    jumprelu_bandwidth=config.jumprelu_bandwidth, matryoshka_widths=config.matryoshka_widths)
    state = checkpoint.RunState(batch_tokens=layout.run_batch_tokens, sparsity_weight=layout.sparsity_weight)
    state.tokens_since_fired = torch.zeros(config.hidden_dim, dtype=torch.int64)
    if saved is None:
        _initialize(sae, state, config, layout, activations, stream, rows_ready, generator, sample)
    sae.to(device).train()
    if str(device).startswith("cuda"):
        # TF32 matmuls for whatever runs outside autocast (ample for SAE training; Ampere and later).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # The fused kernel does Adam's whole update in one launch on CUDA; the CPU keeps the default.
    optimizer = torch.optim.Adam(_param_groups(sae, config, layout.total_steps, saved), lr=config.learning_rate, fused=True)
    state.first_epoch_mixed = layout.mixing is not None
    if saved is not None:
        checkpoint.restore(saved, sae, optimizer, state, d_in=layout.d_in, config=config, n_train=layout.n_train)
        # The checkpoint says how its first epoch drew rows; a resume repeats that.
        if state.epochs_done == 0 and state.first_epoch_mixed and layout.mixing is None:
            raise EngineError(
                "This checkpoint's first epoch followed the extraction order, which these activations do not "
                "have (their _arrival.npy is missing): resume from the activations it was trained on"
            )
        if not state.first_epoch_mixed:
            layout.mixing = None
    state.tokens_since_fired = state.tokens_since_fired.to(device)
    if layout.parallel is not None:
        # Every rank computed the same scale from the same seeded sample; rank 0's makes sure of it
        # (DistributedDataParallel does the same for the weights).
        state.scaling_factor = layout.parallel.broadcast_float(state.scaling_factor)
        if state.target_scaling_factor is not None:
            state.target_scaling_factor = layout.parallel.broadcast_float(state.target_scaling_factor)
    run = Run(config=config, sae=sae, optimizer=optimizer, state=state, device=device,
              total_steps=layout.total_steps, total_tokens=layout.budget or layout.n_train * config.max_epochs,
              dead_window_tokens=plan.dead_window_tokens(config, layout.n_train),
              batch_tokens=layout.batch_tokens, parallel=layout.parallel)
    return run, generator


def _initialize(sae, state, config, layout: Layout, activations, stream, rows_ready, generator, sample) -> None:
    """The input scale is a fixed preprocessing constant, shared by training and evaluation, so it
    comes from all rows; weights only ever see the training rows. b_dec starts at the sample's
    geometric median, W_enc at W_dec.T (engine.sae.module). Targets, when the SAE predicts them,
    get their own scale from the same rows, and b_dec starts at their geometric median: it is the
    output's offset."""
    indices = None
    if sample is not None:
        pass
    elif layout.mixing is None:
        indices = init.sample_indices(layout.n_rows, np.random.default_rng(config.seed))
    else:
        # The rows the first step waits for anyway: the buffer's first fill.
        window = layout.mixing.arrival.rows(0, layout.mixing.first_fill)
        if not rows_ready(len(window)):
            raise ExtractionCancelled("Activation extraction was cancelled")
        indices = init.sample_of(window, config.seed)
    if indices is not None:
        sample = rows_tensor(activations, indices, "cpu", mapped=stream is not None)
    state.scaling_factor = init.scaling_factor(sample)
    centred = sample * state.scaling_factor
    if layout.targets is not None:
        target_sample = rows_tensor(layout.targets, indices, "cpu")
        state.target_scaling_factor = init.scaling_factor(target_sample)
        centred = target_sample * state.target_scaling_factor
    sae.initialize_(centred, generator, b_dec=init.geometric_median(centred))
    state.epoch_rng_state = generator.get_state()


class Loop:
    """The epochs of a run: each a pass over the training rows in a fresh random order (the first
    one, when it follows the extraction order, through the shuffle buffer of engine.trainer.ordering)."""

    def __init__(self, run: Run, writer, layout: Layout, activations, stream, generator, rows_ready, should_stop,
                 on_progress):
        self.run, self.writer, self.layout = run, writer, layout
        self.activations, self.stream, self.generator = activations, stream, generator
        self.rows_ready, self.should_stop, self.on_progress = rows_ready, should_stop, on_progress
        self.last_stop_check = -math.inf
        self.source = None if stream is not None else self._source(activations)
        self.target_source = None if layout.targets is None else self._source(layout.targets)

    def _source(self, activations) -> ActivationSource:
        budget = self.run.config.ram_budget_bytes
        if budget is not None and self.layout.targets is not None:
            budget //= 2  # the inputs and their targets share it
        return ActivationSource(activations, self.layout.n_train, ram_budget_bytes=budget, device=self.run.device)

    def close(self) -> None:
        for source in (self.source, self.target_source):
            if source is not None:
                source.close()

    def epochs(self) -> str:
        while self.run.state.epochs_done < self.run.config.max_epochs:
            stopped_reason = self.after_epoch(self.epoch())
            if stopped_reason is not None:
                return self.last_report(stopped_reason)
        return self.last_report("max_epochs")

    def after_epoch(self, completed: bool) -> str | None:
        """The epoch's end (or a cancel's checkpoint); why the run stops here, None when it goes on."""
        run, state, config = self.run, self.run.state, self.run.config
        if not completed:
            self.writer.write(sae=run.sae, optimizer=run.optimizer, state=state, config=config, mid_epoch=True)
            return "cancelled"
        # The budget may end the run part-way through an epoch: that epoch then ends there.
        budget_spent = self.layout.budget_left(state) == 0
        epoch_loss = end_epoch(run, self.writer, self.generator, force_checkpoint=budget_spent)
        if budget_spent:
            return "training_tokens"
        if epoch_loss < config.min_loss:
            return "min_loss"
        return None

    def last_report(self, stopped_reason: str) -> str:
        run, state, config = self.run, self.run.state, self.run.config
        run.progress.maybe_report(self.on_progress, epoch=min(state.epochs_done + 1, config.max_epochs),
                                  step=state.step, tokens_done=state.tokens_trained, force=True)
        return stopped_reason

    def epoch(self) -> bool:
        """The epoch in progress, from where it stands; False when the run is to stop."""
        run, state, layout = self.run, self.run.state, self.layout
        # epoch_rng_state is the generator's state before this epoch's permutation, so a run
        # resumed from any checkpoint (an epoch's end or mid-epoch) redraws the same order.
        self.generator.set_state(state.epoch_rng_state)
        if state.epoch_step == 0:
            state.epoch_sums = checkpoint.empty_sums()
        mixed = layout.mixing is not None and state.epochs_done == 0
        if mixed:
            order = layout.mixing.order(self.generator)
        else:
            if self.source is None:
                # Every later epoch reads the finished file (in RAM when it fits the budget).
                self.activations = finished(self.stream)
                self.source = self._source(self.activations)
            order = epoch_order(state.epoch_order, layout.n_train, self.generator)
        for batch_index in range(state.epoch_step, layout.steps_per_epoch):
            if layout.budget_left(state) == 0:
                return True
            if self.stop_asked():
                return False
            indices = order[batch_index * layout.batch_tokens : (batch_index + 1) * layout.batch_tokens]
            indices = cut_to_budget(indices, layout, state)
            if mixed:
                # Sorted, so the rows come in one order however they are read.
                indices = indices.sort().values
                if not self.rows_ready(layout.mixing.needed(batch_index)):
                    return False
            if layout.parallel is not None:
                indices = layout.parallel.shard(indices)
            if self.source is None:
                x = rows_tensor(self.activations, indices, run.device, mapped=True) * state.scaling_factor
            else:
                x = self.source.read(indices) * state.scaling_factor
            target = None if self.target_source is None else self.target_source.read(indices) * state.target_scaling_factor
            run.step(x, target)
            state.tokens_trained += len(indices) if layout.parallel is None else len(indices) * layout.parallel.world
            state.epoch_step = batch_index + 1
            run.progress.maybe_report(self.on_progress, epoch=state.epochs_done + 1, step=state.step,
                                      tokens_done=state.tokens_trained)
        if mixed:
            order.drain()  # the next epoch's order starts where the whole first one leaves the generator
        return True

    def stop_asked(self) -> bool:
        """should_stop, at most every stop_check_interval_s; in a data-parallel group every rank stops
        after the same step (the wish travels with the next step's reduction)."""
        run, now = self.run, time.monotonic()
        if self.should_stop is not None and now - self.last_stop_check >= run.config.stop_check_interval_s:
            self.last_stop_check = now
            if self.should_stop():
                if run.parallel is None:
                    return True
                run.stop_wanted = True
        return run.stop_agreed



def cut_to_budget(indices, layout: Layout, state):
    """The batch's rows, the last batch cut where the budget ends (a data-parallel group's to a
    whole share per rank)."""
    left = layout.budget_left(state)
    if left is None or len(indices) <= left:
        return indices
    if layout.parallel is not None:
        left -= left % layout.parallel.world
    return indices[:left]


def end_epoch(run: Run, writer, generator, *, force_checkpoint: bool = False) -> float:
    """The epoch's mean loss into the history; a checkpoint when one is due (or the run ends here)."""
    state, config = run.state, run.config
    sums = state.epoch_sums
    epoch_loss = sums["loss"] / sums["tokens"]
    state.loss_history.append(epoch_loss)
    state.last_epoch_mse = sums["mse"] / sums["tokens"]
    state.epochs_done += 1
    state.epoch_step = 0
    state.epoch_rng_state = generator.get_state()  # the next epoch's order starts here
    if force_checkpoint or writer.due(config, state.epochs_done):
        writer.write(sae=run.sae, optimizer=run.optimizer, state=state, config=config, mid_epoch=False)
    return epoch_loss


def run_result(run: Run, writer, layout: Layout, stopped_reason: str) -> TrainResult:
    state = run.state
    history = state.loss_history
    if history:
        final_loss, final_mse = history[-1], state.last_epoch_mse
    else:  # cancelled inside the first epoch: report what the partial epoch saw
        sums = state.epoch_sums
        final_loss = sums["loss"] / sums["tokens"] if sums["tokens"] else math.nan
        final_mse = sums["mse"] / sums["tokens"] if sums["tokens"] else math.nan
    return TrainResult(
        sae=run.sae.cpu().eval(),
        scaling_factor=state.scaling_factor,
        target_scaling_factor=state.target_scaling_factor,
        final_loss=float(final_loss),
        final_mse=float(final_mse),
        total_epochs=state.epochs_done,
        convergence_epoch=convergence_epoch(history),
        training_time_seconds=time.monotonic() - run.started_at,
        stopped_reason=stopped_reason,
        loss_history=list(history),
        checkpoints=writer.written,
        architecture=run.sae.architecture,
        dead_window_tokens=run.dead_window_tokens,
        tokens_since_fired=state.tokens_since_fired.cpu().numpy().copy(),
        heldout_rows=(layout.n_train, layout.n_rows) if layout.n_train < layout.n_rows else None,
        resampled_features=state.resampled_features,
        sae_batch_tokens=layout.batch_tokens,
        decode_path=state.decode_path or "dense",
        compute_dtype="bfloat16" if run.autocast else "float32",
        tokens_trained=int(state.tokens_trained),
        training_rows=layout.n_train,
    )


def convergence_epoch(history: list[float]) -> int | None:
    """First epoch (1-based) whose mean loss is within 1% of the last epoch's: the point after
    which more training stopped paying off."""
    if not history:
        return None
    final = history[-1]
    for epoch, loss in enumerate(history, start=1):
        if abs(loss - final) <= _CONVERGENCE_TOLERANCE * abs(final):
            return epoch
    return len(history)
