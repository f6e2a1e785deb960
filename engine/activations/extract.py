"""Per-token activations at one hook point of one transformer block, streamed to a float16 .npy file.

Rows are the tokens of every sequence (engine.text.sequences: a BOS put in front of a causal LM's
sequences, special tokens' positions no rows by default), in corpus order (sequence 0's tokens,
then sequence 1's, ...). Sequences run in fixed groups of consecutive ones (GROUP_BATCHES batches'
worth), read from the corpus a group at a time (engine.text.packing.SequenceSource), so an extraction
holds one group's token ids, never the corpus's; inside a group they are sorted by length and
batches run in another order (see _schedule), which is kept beside the file (`<stem>_arrival.npy`)
because a trainer overlapping extraction sees rows in that order.
Only what the hook point needs runs: a hook copies the point's value (engine.models.hooks) and stops the
forward there (resid_pre before block L runs, mlp_out and attn_out after that module).
"""

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from engine.activations.capture import capture_batches
from engine.errors import EngineError
from engine.activations.cache import RowRanges, arrival_path, token_index_paths
from engine.files import AtomicFile
from engine.models.hooks import DEFAULT_HOOK_POINT, available_hook_points, check_hook_point
from engine.models.loading import LoadedModel
from engine.models.info import hidden_size, is_causal_lm, num_layers
from engine.text.packing import SequenceSource
from engine.text.sequences import Sequences, encode

# Forward batches a group of sequences spans: the sequences an extraction holds at once. The
# groups are engine.activations.stream's, so a cache and a stream run the same batches.
GROUP_BATCHES = 8

@dataclass
class ExtractionResult:
    path: Path
    n_tokens: int
    d_model: int
    n_sequences: int
    seconds: float
    tokens_per_s: float
    real_token_share: float  # real tokens / token positions the model computed (padding included)
    dtype: str = "float32"  # what the model computed in (the rows are stored as float16 regardless)
    tokens_path: Path | None = None  # token id of every row (int32), see token_index_paths
    sequence_starts_path: Path | None = None  # first row of every non-empty sequence (int64)
    overlapped: bool = False  # ran in an ExtractionStream, beside a trainer
    hook_point: str = DEFAULT_HOOK_POINT
    prepend_bos: bool = False  # effective: a BOS was put in front of every sequence (engine.text.sequences)
    exclude_special_tokens: bool = False  # special tokens' positions are no rows


@dataclass
class _Plan:
    """Batches of sequences held in memory (one group of an extraction, or of engine.activations.stream): their
    token ids, which positions are rows, where each sequence's rows go, and the batches in the
    order they run (lists of positions in `ids`)."""

    ids: list
    keep: list  # per sequence, a bool array: the positions that are rows
    lengths: np.ndarray  # rows of each sequence
    offsets: np.ndarray  # the row each sequence's first row goes to
    batches: list
    n_tokens: int
    d_model: int
    n_texts: int
    hook_point: str
    prepend_bos: bool
    exclude_special_tokens: bool


@dataclass
class _Schedule:
    """What an extraction will compute, known before the model runs from each sequence's lengths
    alone: where each sequence's rows go in the file, and the order its batches run in. The token
    ids are read again group by group as they run (`groups`)."""

    chunks: Callable[[], Iterator[Sequences]]  # the sequences in corpus order, chunk after chunk, from the first
    name: str  # the corpus, for messages
    lengths: np.ndarray  # rows of each sequence (int64)
    input_lengths: np.ndarray  # token positions the model computes for each sequence
    offsets: np.ndarray
    order: np.ndarray  # the sequences with rows, in the order they run
    batch_starts: np.ndarray  # where each batch starts in `order`
    group_sequences: int
    group_batches: np.ndarray  # the first batch of each group, and the number of batches at the end
    n_tokens: int
    d_model: int
    n_texts: int
    hook_point: str
    prepend_bos: bool
    exclude_special_tokens: bool

    @property
    def n_batches(self) -> int:
        return len(self.batch_starts)

    def batch_rows(self) -> np.ndarray:
        """Rows of each batch, in the order they run."""
        return np.add.reduceat(self.lengths[self.order], self.batch_starts)

    def arrival(self) -> RowRanges:
        """The rows in the order extraction writes them (batch after batch), a run per sequence."""
        return RowRanges(self.offsets[self.order], self.lengths[self.order])

    def arrival_sequences(self) -> np.ndarray:
        """The batches' order as positions among the non-empty sequences (the sequence-starts file)."""
        position = np.cumsum(self.lengths > 0) - 1
        return position[self.order].astype(np.int64)

    def real_positions(self) -> int:
        """Token positions of the sequences that run (special tokens' included)."""
        return int(self.input_lengths[self.lengths > 0].sum())

    def groups(self) -> Iterator[_Plan]:
        """Each group's _Plan in turn, its sequences read from the corpus: only one group's token
        ids (and the chunk being read) are held at once."""
        ids, keep, first = [], [], 0
        for chunk in self.chunks():
            for seq, kept in zip(chunk.ids, chunk.keep):
                ids.append(seq)
                keep.append(kept)
                if len(ids) == self.group_sequences or first + len(ids) == self.n_texts:
                    group = first // self.group_sequences
                    yield self._group(ids, keep, first, *self.group_batches[group : group + 2])
                    first += len(ids)
                    ids, keep = [], []
                    if first == self.n_texts:
                        return
        raise EngineError(f"Corpus '{self.name}' ended early: it changed while the extraction read it")

    def _group(self, ids, keep, first, batch_lo, batch_hi) -> _Plan:
        lengths = np.array([int(k.sum()) for k in keep], dtype=np.int64)
        if not np.array_equal(lengths, self.lengths[first : first + len(ids)]):
            raise EngineError(f"Corpus '{self.name}' changed while the extraction read it: its sequences no longer "
                              "give the rows they gave when it started")
        bounds = np.append(self.batch_starts, len(self.order))[batch_lo : batch_hi + 1]
        batches = [(self.order[lo:hi] - first).tolist() for lo, hi in zip(bounds[:-1], bounds[1:])]
        return _Plan(ids=ids, keep=keep, lengths=lengths, offsets=self.offsets[first : first + len(ids)],
                     batches=batches, n_tokens=int(lengths.sum()), d_model=self.d_model, n_texts=len(ids),
                     hook_point=self.hook_point, prepend_bos=self.prepend_bos,
                     exclude_special_tokens=self.exclude_special_tokens)


def _schedule(loaded: LoadedModel, texts, *, layer_number: int, batch_size: int, max_sequence_length: int, seed: int,
              hook_point: str, prepend_bos: bool, exclude_special_tokens: bool, n_rows: int | None = None,
              lengths: tuple | None = None) -> _Schedule:
    """`texts`: a SequenceSource (read group by group; `lengths`: its lengths(), when known), or the
    sequences in memory (Sequences, or texts to encode). `n_rows`: only the first sequences giving
    at least n_rows rows (all when None), as SequenceSource.read."""
    check_site(loaded, layer_number, hook_point)
    if batch_size < 1 or max_sequence_length < 1:
        raise EngineError("batch_size and max_sequence_length must be at least 1")
    if isinstance(texts, SequenceSource):
        source = texts
        rows, input_lengths = lengths if lengths is not None else source.lengths()
        chunks, name = source.chunks, source.path.name
        prepend_bos, exclude_special_tokens = source.bos, source.exclude_special_tokens
    else:
        if isinstance(texts, Sequences):  # packed already (engine.text.packing)
            sequences = texts
        else:
            sequences = encode(loaded.tokenizer, texts, max_sequence_length=max_sequence_length,
                               causal=is_causal_lm(loaded.config), prepend_bos=prepend_bos,
                               exclude_special_tokens=exclude_special_tokens)
        rows, input_lengths = sequences.rows, sequences.input_lengths
        chunks, name, prepend_bos = (lambda: iter([sequences])), "texts", sequences.prepend_bos
    rows, input_lengths = np.asarray(rows, dtype=np.int64), np.asarray(input_lengths, dtype=np.int64)
    if n_rows is not None:
        keep = int(np.searchsorted(np.cumsum(rows), n_rows, side="left")) + 1
        rows, input_lengths = rows[:keep], input_lengths[:keep]
    n_tokens = int(rows.sum())
    if n_tokens == 0:
        raise EngineError("The corpus produced no tokens: give it some text")
    offsets = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64)
    group_sequences = batch_size * GROUP_BATCHES
    # Inside a group, sorting by length puts similar lengths in one batch, so little compute goes
    # to padding. A group's longest batch runs first (a batch too large for memory fails before
    # the group's others ran); its others run in a seeded random order, so rows reach a trainer
    # that starts before extraction ends (the first epoch of an overlapped run) mixed across the
    # group, not longest first. A sequence with no rows (nothing but special tokens) does not run.
    rng = np.random.default_rng(seed)
    order, batch_sizes, group_batches = [], [], [0]
    for first in range(0, len(rows), group_sequences):
        group = slice(first, first + group_sequences)
        ranked = first + np.argsort(-input_lengths[group], kind="stable")
        ranked = ranked[rows[ranked] > 0]
        batches = [ranked[i : i + batch_size] for i in range(0, len(ranked), batch_size)]
        if batches:
            for i in [0, *(rng.permutation(len(batches) - 1) + 1)]:
                order.append(batches[i])
                batch_sizes.append(len(batches[i]))
        group_batches.append(len(batch_sizes))
    batch_starts = np.concatenate([[0], np.cumsum(batch_sizes)[:-1]]).astype(np.int64)
    return _Schedule(chunks=chunks, name=name, lengths=rows, input_lengths=input_lengths, offsets=offsets,
                     order=np.concatenate(order).astype(np.int64), batch_starts=batch_starts,
                     group_sequences=group_sequences, group_batches=np.asarray(group_batches, dtype=np.int64),
                     n_tokens=n_tokens, d_model=hidden_size(loaded.config),
                     n_texts=len(rows), hook_point=hook_point, prepend_bos=prepend_bos,
                     exclude_special_tokens=exclude_special_tokens)


def check_site(loaded: LoadedModel, layer_number: int, hook_point: str) -> None:
    """The layer exists in the loaded model and has the hook point (EngineError saying what it has)."""
    total_layers = num_layers(loaded.config)
    if not 0 <= layer_number < total_layers:
        raise EngineError(f"Layer {layer_number} does not exist: this model has layers 0 to {total_layers - 1}")
    check_hook_point(hook_point)
    points = available_hook_points(loaded.model)
    if hook_point not in points:
        raise EngineError(f"This model has no {hook_point} hook point: it has {', '.join(points)}")


@dataclass
class SitesExtraction:
    """What extract_sites did: one file per site, from `forward_batches` forward passes in all."""

    results: dict  # (layer_number, hook_point) -> ExtractionResult
    forward_batches: int
    n_tokens: int  # rows of each file: every token was extracted once, for all sites at once
    seconds: float


def extract_sites(loaded: LoadedModel, texts, *, sites: dict, batch_size: int, max_sequence_length: int,
                  on_progress: Callable[[int, int, int], None] | None = None,
                  should_stop: Callable[[], bool] | None = None, seed: int = 0, prepend_bos: bool = True,
                  exclude_special_tokens: bool = True, n_rows: int | None = None,
                  lengths: tuple | None = None) -> SitesExtraction:
    """extract_activations at several sites from the same forward passes: `sites` maps
    (layer_number, hook_point) to the file its rows go to. Each batch runs through the model once
    and stops after the deepest site; every file is what extract_activations would write for its
    site alone (the same rows, order and side files), and appears complete or not at all."""
    if not sites:
        raise EngineError("extract_sites needs at least one (layer_number, hook_point) site")
    started = time.monotonic()
    (first_layer, first_point), *_ = sites
    for layer_number, hook_point in sites:
        check_site(loaded, layer_number, hook_point)
    schedule = _schedule(loaded, texts, layer_number=first_layer, batch_size=batch_size,
                         max_sequence_length=max_sequence_length, seed=seed, hook_point=first_point,
                         prepend_bos=prepend_bos, exclude_special_tokens=exclude_special_tokens, n_rows=n_rows,
                         lengths=lengths)
    outputs = {}
    try:
        for site, path in sites.items():
            outputs[site] = _Output(Path(path), schedule)
        positions, forwards = _extract(loaded, schedule, [(layer, point, outputs[(layer, point)]) for layer, point in sites],
                                       on_progress=on_progress, should_stop=should_stop)
        results = {site: _finish(replace(schedule, hook_point=site[1]), output, loaded, started, positions)
                   for site, output in outputs.items()}
    except BaseException:
        for output in outputs.values():
            output.discard()
        raise
    return SitesExtraction(results=results, forward_batches=forwards, n_tokens=schedule.n_tokens,
                           seconds=time.monotonic() - started)


def extract_activations(
    loaded: LoadedModel,
    texts,
    *,
    layer_number: int,
    batch_size: int,
    max_sequence_length: int,
    out_path: Path,
    on_progress: Callable[[int, int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    seed: int = 0,
    hook_point: str = DEFAULT_HOOK_POINT,
    prepend_bos: bool = True,
    exclude_special_tokens: bool = True,
    n_rows: int | None = None,
    lengths: tuple | None = None,
) -> ExtractionResult:
    """Extract every row to out_path, then return. See ExtractionStream for the same work in a
    background thread while a trainer consumes the rows. `texts`: a list of texts, their
    Sequences, or a SequenceSource, read a group at a time (its prepend_bos and
    exclude_special_tokens are then its own; `lengths`: its lengths(), which saves a tokenizing
    pass; `n_rows`: the first sequences giving at least that many rows). hook_point: engine.models.hooks;
    prepend_bos and exclude_special_tokens: engine.text.sequences."""
    started = time.monotonic()
    schedule = _schedule(loaded, texts, layer_number=layer_number, batch_size=batch_size,
                         max_sequence_length=max_sequence_length, seed=seed, hook_point=hook_point,
                         prepend_bos=prepend_bos, exclude_special_tokens=exclude_special_tokens, n_rows=n_rows,
                         lengths=lengths)
    output = _Output(Path(out_path), schedule)
    try:
        positions, _ = _extract(loaded, schedule, [(layer_number, hook_point, output)], on_progress=on_progress,
                                should_stop=should_stop)
        return _finish(schedule, output, loaded, started, positions)
    except BaseException:
        output.discard()
        raise


class ExtractionStream:
    """extract_activations in a background thread, its rows readable while it runs: a trainer
    waits for the rows it needs (`wait`) and steps on them while the model computes the next batch.
    The rows arrive in a fixed order known at the start (`arrival`), so what a consumer computes
    from them does not depend on timing.

    Progress callbacks run in the consumer's thread (inside `wait` and `result`), never in the
    producer's, so a caller's callbacks may use thread-bound resources such as a database connection.
    """

    def __init__(self, loaded: LoadedModel, texts, *, layer_number: int, batch_size: int,
                 max_sequence_length: int, out_path: Path,
                 on_progress: Callable[[int, int, int], None] | None = None,
                 on_done: Callable[[ExtractionResult], None] | None = None, seed: int = 0,
                 hook_point: str = DEFAULT_HOOK_POINT, prepend_bos: bool = True, exclude_special_tokens: bool = True,
                 n_rows: int | None = None, lengths: tuple | None = None):
        """`on_done(result)`: once, in the consumer's thread, when the finished file is in place
        (a caller records where the cache is, so a crash later in training need not redo it).
        `texts`, `n_rows` and `lengths`: extract_activations'."""
        import threading

        self._started = time.monotonic()
        self._schedule = _schedule(loaded, texts, layer_number=layer_number, batch_size=batch_size,
                                   max_sequence_length=max_sequence_length, seed=seed, hook_point=hook_point,
                                   prepend_bos=prepend_bos, exclude_special_tokens=exclude_special_tokens,
                                   n_rows=n_rows, lengths=lengths)
        self.out_path = Path(out_path)
        self._output = _Output(self.out_path, self._schedule)
        self.array = self._output.rows
        self.shape = self.array.shape
        self.arrival = self._schedule.arrival()
        self._batch_ends = np.cumsum(self._schedule.batch_rows())
        self._on_progress = on_progress
        self._on_done = on_done
        self._done_delivered = False
        self._lock = threading.Condition()
        self._published = 0  # rows of `arrival` written so far
        self._events: list = []
        self._error: BaseException | None = None
        self._result: ExtractionResult | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._produce, args=(loaded, layer_number), name="activation-extraction", daemon=True
        )
        self._thread.start()

    def _produce(self, loaded, layer_number):
        batch_number = 0

        def on_progress(done, total, tokens):
            nonlocal batch_number
            with self._lock:
                self._published = int(self._batch_ends[batch_number])
                self._events.append((done, total, tokens))
                self._lock.notify_all()
            batch_number += 1

        try:
            with _side_stream(loaded.device):
                positions, _ = _extract(loaded, self._schedule, [(layer_number, self._schedule.hook_point, self._output)],
                                        on_progress=on_progress, should_stop=self._stop.is_set)
            result = _finish(self._schedule, self._output, loaded, self._started, positions, overlapped=True)
            with self._lock:
                self._result = result
                self._lock.notify_all()
        except BaseException as err:  # handed to the consumer, which re-raises it
            self._output.discard()
            with self._lock:
                self._error = err
                self._lock.notify_all()

    def wait(self, n_rows: int, timeout: float | None = None) -> bool:
        """True once the first n_rows of `arrival` are written; False after timeout seconds.
        Raises what stopped the extraction (a cancel, a NaN layer, out of memory...)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                if self._error is not None:
                    raise self._error
                if self._published >= n_rows or self._result is not None:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._lock.wait(remaining)
            ready = self._published >= n_rows or self._result is not None
            events, self._events = self._events, []
            finished = self._result
        self._deliver(events, finished)
        return ready

    def result(self) -> ExtractionResult:
        """Wait for the whole extraction; the complete file is then at out_path."""
        self._thread.join()
        self.wait(0)
        return self._result

    @property
    def error(self) -> BaseException | None:
        """What stopped the extraction, if anything did."""
        with self._lock:
            return self._error

    def close(self) -> None:
        """Stop the extraction (if it still runs) and wait for its thread; the partial file goes."""
        self._stop.set()
        self._thread.join()

    def _deliver(self, events, finished):
        if self._on_progress is not None:
            for event in events:
                self._on_progress(*event)
        if finished is not None and not self._done_delivered:
            self._done_delivered = True
            if self._on_done is not None:
                self._on_done(finished)


def _side_stream(device):
    """On a GPU, the extraction's kernels go to a CUDA stream of their own, so the GPU can run them
    between the trainer's (which use the default stream) instead of strictly after them. Each
    batch's output is copied to the host on that stream, which waits for it."""
    import contextlib

    import torch

    if not str(device).startswith("cuda"):
        return contextlib.nullcontext()
    return torch.cuda.stream(torch.cuda.Stream(device=torch.device(device)))


class _Output:
    """One site's files while the extraction writes them: the rows and the token id of each row,
    under temporary names until _finish renames them, so a file at out_path is always complete."""

    def __init__(self, out_path: Path, schedule: _Schedule):
        out_path.parent.mkdir(parents=True, exist_ok=True)
        # Partials of their own: a stale run of the same job (engine.files.AtomicFile) never writes
        # into the rows of the run that took the job over.
        self.file = AtomicFile(out_path, own=True)
        self.tokens_file = AtomicFile(token_index_paths(out_path)[0], own=True)
        self.rows = np.lib.format.open_memmap(self.file.partial, mode="w+", dtype=np.float16,
                                              shape=(schedule.n_tokens, schedule.d_model))
        self.tokens = np.lib.format.open_memmap(self.tokens_file.partial, mode="w+", dtype=np.int32,
                                                shape=(schedule.n_tokens,))

    def discard(self) -> None:
        self.file.discard()
        self.tokens_file.discard()


def _extract(loaded, schedule: _Schedule, sites, *, on_progress, should_stop) -> tuple[int, int]:
    """Run the schedule's batches a group at a time, writing every site's rows and token ids at
    their rows: `sites` is a list of (layer_number, hook_point, _Output). (token positions
    computed, padding included; forward passes run)."""
    positions = forwards = sequences_done = tokens_done = 0

    def progress(done, _, tokens):
        on_progress(sequences_done + done, schedule.n_texts, tokens_done + tokens)

    for plan in schedule.groups():
        computed, ran = capture_batches(loaded, plan, [(layer, point, output.rows) for layer, point, output in sites],
                                        on_progress=None if on_progress is None else progress, should_stop=should_stop)
        positions, forwards = positions + computed, forwards + ran
        tokens = _row_tokens(plan)
        for _, _, output in sites:
            output.tokens[plan.offsets[0] : plan.offsets[0] + plan.n_tokens] = tokens
        sequences_done += int((plan.lengths > 0).sum())
        tokens_done += plan.n_tokens
        del plan, tokens  # this group's token ids go before the next group is read
    return positions, forwards


def _row_tokens(plan: _Plan) -> np.ndarray:
    """The token id of each of the plan's rows, in row order (int32)."""
    return np.fromiter((t for seq, keep in zip(plan.ids, plan.keep) for t, kept in zip(seq, keep) if kept),
                       dtype=np.int32, count=plan.n_tokens)


def _run_batches(loaded, plan: _Plan, rows, *, layer_number, on_progress, should_stop) -> int:
    """Run the plan's batches, writing each sequence's rows at its offset; the number of token
    positions computed (padding included)."""
    positions, _ = capture_batches(loaded, plan, [(layer_number, plan.hook_point, rows)],
                                   on_progress=on_progress, should_stop=should_stop)
    return positions


def _finish(schedule: _Schedule, output: _Output, loaded, started: float, positions_computed: int,
            *, overlapped: bool = False) -> ExtractionResult:
    out_path = output.file.path
    output.rows.flush()
    output.tokens.flush()
    # The token index and the batch order first: a complete activations file always has them beside it.
    tokens_path, starts_path = token_index_paths(out_path)
    output.tokens_file.commit()
    np.save(starts_path, schedule.offsets[schedule.lengths > 0].astype(np.int64))
    np.save(arrival_path(out_path), schedule.arrival_sequences())
    output.file.commit()
    seconds = time.monotonic() - started
    return ExtractionResult(
        path=out_path,
        n_tokens=schedule.n_tokens,
        d_model=schedule.d_model,
        n_sequences=schedule.n_texts,
        seconds=seconds,
        tokens_per_s=schedule.n_tokens / seconds if seconds > 0 else math.inf,
        # The model computed special tokens' positions too: they are real tokens, not padding.
        real_token_share=schedule.real_positions() / positions_computed if positions_computed else 1.0,
        dtype=str(loaded.dtype).removeprefix("torch."),
        tokens_path=tokens_path,
        sequence_starts_path=starts_path,
        overlapped=overlapped,
        hook_point=schedule.hook_point,
        prepend_bos=schedule.prepend_bos,
        exclude_special_tokens=schedule.exclude_special_tokens,
    )
