"""Per-token activations at one hook point of one transformer block, streamed to a float16 .npy file.

Rows are the tokens of every sequence (engine.sequences: a BOS put in front of a causal LM's
sequences, special tokens' positions no rows by default), in corpus order (sequence 0's tokens,
then sequence 1's, ...); batches run in another order (by length, see _plan), which is kept beside
the file (`<stem>_arrival.npy`) because a trainer overlapping extraction sees rows in that order.
Only what the hook point needs runs: a hook copies the point's value (engine.hooks) and stops the
forward there (resid_pre before block L runs, mlp_out and attn_out after that module).
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from engine.capture import capture_batches
from engine.errors import EngineError
from engine.cache import arrival_path, concat_ranges, token_index_paths
from engine.files import AtomicFile
from engine.hooks import DEFAULT_HOOK_POINT, available_hook_points, check_hook_point
from engine.loading import LoadedModel
from engine.model_info import hidden_size, is_causal_lm, num_layers
from engine.sequences import Sequences, encode

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
    prepend_bos: bool = False  # effective: a BOS was put in front of every sequence (engine.sequences)
    exclude_special_tokens: bool = False  # special tokens' positions are no rows


@dataclass
class _Plan:
    """What an extraction will compute, known before the model runs: the token ids, which
    positions are rows, where each sequence's rows go in the file, and the batches in the order
    they run."""

    ids: list
    keep: list  # per sequence, a bool array: the positions that are rows
    lengths: np.ndarray  # rows of each sequence
    offsets: np.ndarray
    batches: list  # lists of sequence numbers, in the order they run
    n_tokens: int
    d_model: int
    n_texts: int
    hook_point: str
    prepend_bos: bool
    exclude_special_tokens: bool

    def arrival_rows(self) -> np.ndarray:
        """Row numbers in the order extraction writes them (batch after batch)."""
        order = np.fromiter((i for batch in self.batches for i in batch), dtype=np.int64)
        return concat_ranges(self.offsets[order], self.lengths[order])

    def arrival_sequences(self) -> np.ndarray:
        """The batches' order as positions among the non-empty sequences (the sequence-starts file)."""
        position = np.cumsum(self.lengths > 0) - 1
        return np.fromiter((position[i] for batch in self.batches for i in batch), dtype=np.int64)


def _plan(loaded: LoadedModel, texts, *, layer_number: int, batch_size: int, max_sequence_length: int, seed: int,
          hook_point: str, prepend_bos: bool, exclude_special_tokens: bool) -> _Plan:
    check_site(loaded, layer_number, hook_point)
    if batch_size < 1 or max_sequence_length < 1:
        raise EngineError("batch_size and max_sequence_length must be at least 1")
    if isinstance(texts, Sequences):  # packed already (engine.packing)
        sequences = texts
    else:
        sequences = encode(loaded.tokenizer, texts, max_sequence_length=max_sequence_length,
                           causal=is_causal_lm(loaded.config), prepend_bos=prepend_bos,
                           exclude_special_tokens=exclude_special_tokens)
    lengths = sequences.rows
    n_tokens = int(lengths.sum())
    if n_tokens == 0:
        raise EngineError("The corpus produced no tokens: give it some text")
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    # Sorting by length puts similar lengths in one batch, so little compute goes to padding. The
    # longest batch runs first (a batch too large for memory fails at once); the others run in a
    # seeded random order, so rows reach a trainer that starts before extraction ends (the first
    # epoch of an overlapped run) as a mix of the whole corpus, not longest first. A sequence
    # with no rows (nothing but special tokens) does not run.
    input_lengths = sequences.input_lengths
    order = [i for i in np.argsort(-input_lengths, kind="stable") if lengths[i] > 0]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rest = np.random.default_rng(seed).permutation(len(batches) - 1) + 1
    batches = [batches[0]] + [batches[i] for i in rest]
    return _Plan(ids=sequences.ids, keep=sequences.keep, lengths=lengths, offsets=offsets, batches=batches,
                 n_tokens=n_tokens, d_model=hidden_size(loaded.config), n_texts=len(sequences.ids), hook_point=hook_point,
                 prepend_bos=sequences.prepend_bos, exclude_special_tokens=exclude_special_tokens)


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
                  exclude_special_tokens: bool = True) -> SitesExtraction:
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
    plan = _plan(loaded, texts, layer_number=first_layer, batch_size=batch_size, max_sequence_length=max_sequence_length,
                 seed=seed, hook_point=first_point, prepend_bos=prepend_bos, exclude_special_tokens=exclude_special_tokens)
    opened = {site: _open_partial(Path(path), plan) for site, path in sites.items()}
    try:
        positions, forwards = capture_batches(loaded, plan, [(layer, point, opened[(layer, point)][0]) for layer, point in sites],
                                              on_progress=on_progress, should_stop=should_stop)
        results = {site: _finish(replace(plan, hook_point=site[1]), rows, file, loaded, started, positions)
                   for site, (rows, file) in opened.items()}
    except BaseException:
        for _, file in opened.values():
            file.discard()
        raise
    return SitesExtraction(results=results, forward_batches=forwards, n_tokens=plan.n_tokens,
                           seconds=time.monotonic() - started)


def extract_activations(
    loaded: LoadedModel,
    texts: list[str],
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
) -> ExtractionResult:
    """Extract every row to out_path, then return. See ExtractionStream for the same work in a
    background thread while a trainer consumes the rows. hook_point: engine.hooks; prepend_bos
    and exclude_special_tokens: engine.sequences."""
    started = time.monotonic()
    plan = _plan(loaded, texts, layer_number=layer_number, batch_size=batch_size,
                 max_sequence_length=max_sequence_length, seed=seed, hook_point=hook_point,
                 prepend_bos=prepend_bos, exclude_special_tokens=exclude_special_tokens)
    out_path = Path(out_path)
    rows, file = _open_partial(out_path, plan)
    try:
        positions = _run_batches(loaded, plan, rows, layer_number=layer_number, on_progress=on_progress,
                                 should_stop=should_stop)
        return _finish(plan, rows, file, loaded, started, positions)
    except BaseException:
        file.discard()
        raise


class ExtractionStream:
    """extract_activations in a background thread, its rows readable while it runs: a trainer
    waits for the rows it needs (`wait`) and steps on them while the model computes the next batch.
    The rows arrive in a fixed order known at the start (`arrival`), so what a consumer computes
    from them does not depend on timing.

    Progress callbacks run in the consumer's thread (inside `wait` and `result`), never in the
    producer's, so a caller's callbacks may use thread-bound resources such as a database connection.
    """

    def __init__(self, loaded: LoadedModel, texts: list[str], *, layer_number: int, batch_size: int,
                 max_sequence_length: int, out_path: Path,
                 on_progress: Callable[[int, int, int], None] | None = None,
                 on_done: Callable[[ExtractionResult], None] | None = None, seed: int = 0,
                 hook_point: str = DEFAULT_HOOK_POINT, prepend_bos: bool = True, exclude_special_tokens: bool = True):
        """`on_done(result)`: once, in the consumer's thread, when the finished file is in place
        (a caller records where the cache is, so a crash later in training need not redo it)."""
        import threading

        self._started = time.monotonic()
        self._plan = _plan(loaded, texts, layer_number=layer_number, batch_size=batch_size,
                           max_sequence_length=max_sequence_length, seed=seed, hook_point=hook_point,
                           prepend_bos=prepend_bos, exclude_special_tokens=exclude_special_tokens)
        self.out_path = Path(out_path)
        self.array, self._file = _open_partial(self.out_path, self._plan)
        self.shape = self.array.shape
        self.arrival = self._plan.arrival_rows()
        ends = np.cumsum([int(self._plan.lengths[batch].sum()) for batch in self._plan.batches])
        self._batch_ends = ends
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
                positions = _run_batches(loaded, self._plan, self.array, layer_number=layer_number,
                                         on_progress=on_progress, should_stop=self._stop.is_set)
            result = _finish(self._plan, self.array, self._file, loaded, self._started, positions, overlapped=True)
            with self._lock:
                self._result = result
                self._lock.notify_all()
        except BaseException as err:  # handed to the consumer, which re-raises it
            self._file.discard()
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


def _open_partial(out_path: Path, plan: _Plan):
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name and renamed at the end, so a file at out_path is always complete.
    file = AtomicFile(out_path)
    rows = np.lib.format.open_memmap(file.partial, mode="w+", dtype=np.float16, shape=(plan.n_tokens, plan.d_model))
    return rows, file


def _run_batches(loaded, plan: _Plan, rows, *, layer_number, on_progress, should_stop) -> int:
    """Run the plan's batches, writing each sequence's rows at its offset; the number of token
    positions computed (padding included)."""
    positions, _ = capture_batches(loaded, plan, [(layer_number, plan.hook_point, rows)],
                                   on_progress=on_progress, should_stop=should_stop)
    return positions


def _finish(plan: _Plan, rows, file: AtomicFile, loaded, started: float, positions_computed: int,
            *, overlapped: bool = False) -> ExtractionResult:
    out_path = file.path
    rows.flush()
    # The token index and the batch order first: a complete activations file always has them beside it.
    tokens_path, starts_path = token_index_paths(out_path)
    real = plan.lengths > 0
    np.save(tokens_path, np.fromiter((t for seq, keep in zip(plan.ids, plan.keep) for t, kept in zip(seq, keep) if kept),
                                     dtype=np.int32, count=plan.n_tokens))
    np.save(starts_path, plan.offsets[real].astype(np.int64))
    np.save(arrival_path(out_path), plan.arrival_sequences())
    file.commit()
    seconds = time.monotonic() - started
    return ExtractionResult(
        path=out_path,
        n_tokens=plan.n_tokens,
        d_model=plan.d_model,
        n_sequences=plan.n_texts,
        seconds=seconds,
        tokens_per_s=plan.n_tokens / seconds if seconds > 0 else math.inf,
        # The model computed special tokens' positions too: they are real tokens, not padding.
        real_token_share=_real_positions(plan) / positions_computed if positions_computed else 1.0,
        dtype=str(loaded.dtype).removeprefix("torch."),
        tokens_path=tokens_path,
        sequence_starts_path=starts_path,
        overlapped=overlapped,
        hook_point=plan.hook_point,
        prepend_bos=plan.prepend_bos,
        exclude_special_tokens=plan.exclude_special_tokens,
    )


def _real_positions(plan: _Plan) -> int:
    return sum(len(plan.ids[i]) for batch in plan.batches for i in batch)
