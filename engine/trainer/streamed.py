"""A run whose rows stream from the model (engine.activations.stream.ActivationStream), with
no cache to draw random batches from.

Each epoch reads the training rows front to back in blocks of `shuffle_buffer_tokens` (rounded
down to whole batches); a block's rows are shuffled and stepped on in batches, so a batch mixes a
block's worth of the corpus (as SAELens' mixing buffer does). A block's order comes from a
generator seeded by (seed, epoch, block), so a run resumed at any step recomputes its block from
the corpus and takes the same batches: the checkpoint's epoch and step say which block. The
checkpoint also keeps where in the corpus that block's first group starts (ActivationStream.
seek_record), so a resume reads the corpus from there instead of tokenizing it from its start.
Besides the epochs' ends and a cancel, a checkpoint is written at a block's start whenever
checkpoint_interval_s has passed since the last one (a one-pass run has no epoch end before its
last step), the run keeping the latest of them only (checkpoint.Writer).
The next block is computed in a background thread while the SAE steps on this one.

With `distributed`, every rank of a process group reads the whole stream (the model runs over every
row in every rank) and steps on its share r::world of each batch, as a cached run's ranks do
(engine.distributed): together they train on exactly the batches one process would, the SAE step
data-parallel, the model's forward not. Rank 0 alone writes checkpoints.
"""
import math
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from engine.errors import EngineError, ExtractionCancelled
from engine.trainer import checkpoint, init
from engine.trainer.config import check_config
from engine.trainer.epochs import Loop, cut_to_budget, run_layout, run_result, start_run
from engine.trainer.rows import StreamedRows


def block_rows(config, batch_tokens: int) -> int:
    """Rows of a shuffle block: the buffer, in whole batches (one batch at least)."""
    return batch_tokens * max(1, config.shuffle_buffer_tokens // batch_tokens)


def block_seed(seed: int, epoch: int, block: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, block]).generate_state(1)[0])


@dataclass
class Epoch:
    """What a run's steps (streamed_steps) read next: these row ranges, in order (one Next each),
    the first from the group the corpus holds at `at` (a resume's engine.text.packing.Position) or None."""

    ranges: list
    at: object = None


NEXT = "next"  # a run's steps ask for their Epoch's next range: sent back (rows, their first group's Position)


def streamed_steps(stream, config, *, device: str = "cpu", checkpoint_dir=None, checkpoint_prefix: str = "sae",
                   on_progress=None, should_stop=None, on_checkpoint=None, resume_from=None, distributed: bool = False):
    """A streamed run (train_sae given an ActivationStream) as a generator that asks for its rows
    instead of reading them: it yields an Epoch, then NEXT once per range of it (each answered with
    (rows, Position)), and returns the TrainResult (streamed=True). train_sae answers from the stream
    alone (read_alone); a streaming sweep answers several runs from one pass of the model
    (engine.trainer.shared_stream). `stream` (an ActivationStream or its StreamedRows) gives the
    shape, the groups and the seek records; its rows are read only by whoever answers. The last
    eval_fraction of its rows are held out as from a cache. `distributed`: every rank of an
    initialised process group runs it, each with its own stream over the same corpus and model."""
    check_config(config)
    if isinstance(stream, StreamedRows):
        stream = stream.stream
    saved = checkpoint.load(resume_from) if resume_from is not None else None
    if saved is not None and not saved.payload.get("streamed", False):
        raise EngineError(f"Checkpoint '{saved.name}' was trained from an activation cache: resume it from that cache")
    layout = run_layout(config, stream, saved, device=device, distributed=distributed, first_epoch_rows=None)
    block = block_rows(config, layout.batch_tokens)
    started = time.monotonic()
    first_block = sample = None
    if saved is None:
        # The first block gives the input scale and b_dec's start (and is the first block trained on).
        yield Epoch(_ranges(block, layout.n_train, 0))
        first_block, _ = yield NEXT
        picked = np.sort(init.sample_of(np.arange(len(first_block)), config.seed))
        sample = torch.from_numpy(first_block[picked].astype(np.float32))
    run, _ = start_run(config, layout, stream, None, saved, None, device=device, sample=sample)
    # The first block's forward is training time too (its throughput and ETA count it).
    run.progress.started_at = run.progress.last_report_at = started
    run.state.streamed = True
    run.state.stream_seek = stream.seek_record(None)
    writer = checkpoint.Writer(checkpoint_dir, checkpoint_prefix, on_checkpoint, resumed_from=resume_from,
                               enabled=layout.parallel is None or layout.parallel.rank == 0)
    loop = _StreamLoop(run, writer, layout, stream, block, first_block, should_stop, on_progress)
    if saved is not None:
        loop.resume_at = stream.position_from(saved.payload.get("stream_seek"))
    stopped_reason = yield from loop.steps()
    result = run_result(run, writer, layout, stopped_reason)
    result.streamed = True
    return result


def _ranges(block: int, n_train: int, first: int) -> list:
    """Blocks [first, ...) of an epoch, as row ranges."""
    return [(b * block, min((b + 1) * block, n_train)) for b in range(first, math.ceil(n_train / block))]


def read_alone(stream, steps):
    """Run `steps` (streamed_steps) on rows `stream` computes for it alone, the next block in a
    background thread while the SAE steps on this one."""
    blocks = None
    try:
        request = next(steps)
        while True:
            if isinstance(request, Epoch):
                if blocks is not None:
                    blocks.close()
                blocks = _Blocks(stream, request.ranges, at=request.at)
                request = next(steps)
            else:
                request = steps.send(blocks.next())
    except StopIteration as done:
        return done.value
    finally:
        if blocks is not None:
            blocks.close()


class _StreamLoop(Loop):
    """Loop's epochs, stop checks and ends; an epoch asks for the stream's blocks."""

    def __init__(self, run, writer, layout, stream, block: int, first_block, should_stop, on_progress):
        self.run, self.writer, self.layout, self.stream = run, writer, layout, stream
        self.block, self.first_block = block, first_block
        self.should_stop, self.on_progress = should_stop, on_progress
        self.generator = torch.Generator().manual_seed(run.config.seed)
        self.generator.set_state(run.state.epoch_rng_state)
        self.last_stop_check = -math.inf
        self.source = None  # no cache to read
        self.resume_at = None  # where the corpus holds the resumed block's first group (engine.text.packing.Position)

    def steps(self):
        """Loop.epochs, each epoch asking for its blocks (yields Epoch and NEXT)."""
        while self.run.state.epochs_done < self.run.config.max_epochs:
            stopped_reason = self.after_epoch((yield from self.epoch_steps()))
            if stopped_reason is not None:
                return self.last_report(stopped_reason)
        return self.last_report("max_epochs")

    def epoch_steps(self):
        run, state, layout, batch = self.run, self.run.state, self.layout, self.layout.batch_tokens
        if state.epoch_step == 0:
            state.epoch_sums = checkpoint.empty_sums()
        steps_per_block = self.block // batch
        n_blocks = math.ceil(layout.n_train / self.block)
        first = state.epoch_step // steps_per_block
        # The pass's first block, read before the SAE was made: its Epoch is asked for already.
        prefetched = self.first_block if state.epochs_done == 0 and first == 0 else None
        self.first_block = None
        at, self.resume_at = self.resume_at, None
        if at is not None and at.sequence != self.stream.group_start(first * self.block):
            at = None  # not this block's: the corpus is read from its start
        if prefetched is None:
            yield Epoch(_ranges(self.block, layout.n_train, first), at)
        for b in range(first, n_blocks):
            if b == first and prefetched is not None:
                rows, position = prefetched, None  # the pass's first block: no seek to its start
            else:
                rows, position = yield NEXT
            prefetched = None  # held no longer than its block: memory stays at the blocks in flight
            # A checkpoint written while on this block resumes reading the corpus at its first group.
            state.stream_seek = self.stream.seek_record(position)
            if b > first:
                self._checkpoint_when_due()
            order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(
                block_seed(run.config.seed, state.epochs_done, b)))
            first_step = b * steps_per_block
            for s in range(state.epoch_step - first_step, math.ceil(len(rows) / batch)):
                if layout.budget_left(state) == 0:
                    return self._epoch_ended()
                if self.stop_asked():
                    return False
                indices = cut_to_budget(order[s * batch : (s + 1) * batch], layout, state)
                if layout.parallel is not None:
                    indices = layout.parallel.shard(indices)
                    if not len(indices):  # the pass's last batch, smaller than the world: left out
                        break
                picked = np.sort(indices.numpy())
                x = torch.from_numpy(rows[picked]).to(run.device, torch.float32) * state.scaling_factor
                run.step(x)
                state.tokens_trained += len(picked) * (1 if layout.parallel is None else layout.parallel.world)
                state.epoch_step = first_step + s + 1
                run.progress.maybe_report(self.on_progress, epoch=state.epochs_done + 1, step=state.step,
                                          tokens_done=state.tokens_trained)
        return self._epoch_ended()

    def _checkpoint_when_due(self) -> None:
        """At a block's start, before its first step, when checkpoint_interval_s has passed: a run
        killed later resumes here, recomputing only this block (its rows are in no file), instead of
        from the pass's start. One pass may be the whole run, so the epoch's end is not enough."""
        run, state = self.run, self.run.state
        if self.layout.budget_left(state) != 0 and self.writer.interval_passed(run.config):
            self.writer.write(sae=run.sae, optimizer=run.optimizer, state=state, config=run.config, mid_epoch=True)

    def _epoch_ended(self) -> bool:
        """The epoch's checkpoint, and the next epoch, read the corpus from its start."""
        self.run.state.stream_seek = self.stream.seek_record(None)
        return True


class _Blocks:
    """An Epoch's row ranges, computed one ahead in a background thread."""

    def __init__(self, stream, ranges: list, *, at=None):
        self._queue = queue.Queue(maxsize=1)
        self._device = stream.loaded.device
        self._stop = threading.Event()
        self._ranges = list(ranges)
        self._thread = None
        if self._ranges:
            reader = stream.reader(self._ranges[0][0], self._ranges[-1][1], should_stop=self._stop.is_set, at=at)
            self._thread = threading.Thread(target=self._produce, args=(reader,), name="activation-stream", daemon=True)
            self._thread.start()

    def _produce(self, reader):
        from engine.activations.extract import _side_stream

        try:
            with _side_stream(self._device):
                self._produce_blocks(reader)
        except ExtractionCancelled:
            return
        except BaseException as err:  # handed to the consumer, which re-raises it
            self._queue.put(("error", err))

    def _produce_blocks(self, reader):
        for lo, hi in self._ranges:
            rows = reader.read(lo, hi)  # a view of rows the reader never writes again
            position = reader.position(lo)
            while not self._stop.is_set():
                try:
                    self._queue.put(("rows", (rows, position)), timeout=0.2)
                    break
                except queue.Full:
                    continue
            if self._stop.is_set():
                return

    def next(self) -> np.ndarray:
        kind, value = self._queue.get()
        if kind == "error":
            raise value
        return value

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            stop_producer(self._thread, self._queue)


def stop_producer(thread: threading.Thread, handoff: queue.Queue) -> None:
    """Wait for a producer thread whose stop event is set, emptying its hand-off queue so a put
    it is blocked in returns."""
    while thread.is_alive():
        try:
            handoff.get_nowait()
        except queue.Empty:
            pass
        thread.join(timeout=0.1)
