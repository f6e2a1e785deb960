"""A pass over a corpus's activations without a cache: rows computed by the model when they are
read, in corpus order, and never written to disk.

Sequences run in fixed groups (`group_sequences` consecutive ones, sorted by length inside the group
so little compute goes to padding), whatever row a read starts at: a read from the middle of the
pass (a resumed run) computes exactly the rows an uninterrupted one did. A read records the
Position of every group it computes (engine.text.packing), and a read given a group's Position seeks
there: nothing before the group's chunk is tokenized again. Without one, skipping to a row
tokenizes the corpus up to it; either way the model runs only from the group that holds it.
"""
from collections.abc import Iterator

import numpy as np

from engine.activations import extract as extraction
from engine.activations.extract import GROUP_BATCHES, _Plan, check_site
from engine.activations.capture import capture_batches
from engine.errors import EngineError
from engine.models.hooks import DEFAULT_HOOK_POINT
from engine.models.loading import LoadedModel
from engine.models.info import hidden_size
from engine.text.packing import Position, SequenceSource
from engine.text.sequences import Sequences, concatenate

# Group positions a stream remembers (each holds up to a window of carried tokens).
_KNOWN_POSITIONS = 1024


class ActivationStream:
    """Rows [0, n_rows) of one pass over `source`: whole sequences, the first ones giving at least
    `n_rows` rows (all of the corpus when None). `rows_per_sequence`: source.rows_per_sequence()."""

    dtype = np.dtype(np.float16)  # as a cache stores them, so a streamed run trains on the same values

    def __init__(self, loaded: LoadedModel, source: SequenceSource, rows_per_sequence: np.ndarray, *, layer_number: int,
                 batch_size: int, hook_point: str = DEFAULT_HOOK_POINT, n_rows: int | None = None,
                 corpus_rows: int | None = None):
        check_site(loaded, layer_number, hook_point)
        if batch_size < 1:
            raise EngineError("batch_size must be at least 1")
        self.loaded, self.source = loaded, source
        self.layer_number, self.hook_point, self.batch_size = layer_number, hook_point, batch_size
        ends = np.cumsum(np.asarray(rows_per_sequence, dtype=np.int64))
        if len(ends) == 0 or ends[-1] == 0:
            raise EngineError("The corpus produced no tokens: give it some text")
        # Rows of one pass over the whole corpus: rows_per_sequence's, unless they are the first
        # sequences' only (a resume's, from its checkpoint: seek_record).
        self.corpus_rows = int(ends[-1]) if corpus_rows is None else int(corpus_rows)
        self.fingerprint = source.fingerprint()
        wanted = int(ends[-1]) if n_rows is None else min(int(n_rows), int(ends[-1]))
        self.n_sequences = int(np.searchsorted(ends, wanted, side="left")) + 1
        self.ends = ends[: self.n_sequences]
        self.n_rows = int(self.ends[-1])
        self.d_model = hidden_size(loaded.config)
        self.shape = (self.n_rows, self.d_model)
        self.group_sequences = batch_size * GROUP_BATCHES
        self.error: BaseException | None = None  # what last stopped the model's forward
        self.forward_batches = 0  # the model's forward passes this stream ran
        self._rows_kept = None
        # The Position of groups computed so far (first sequence: Position), so a later read (the
        # rows after training, the held-out sequences) seeks to the nearest one before it instead
        # of tokenizing the corpus from its start; at most _KNOWN_POSITIONS, thinned evenly.
        self._known: dict[int, Position] = {}
        # The rows from _kept_from to the pass's end, kept as they are computed (keep_from).
        self._kept_from: int | None = None
        self._kept = self._kept_tokens = self._kept_filled = None

    def sequence_starts(self) -> np.ndarray:
        """The first row of every sequence with rows (int64), as engine.activations.cache keeps them."""
        starts = np.concatenate([[0], self.ends[:-1]])
        return starts[np.diff(np.concatenate([[0], self.ends])) > 0].astype(np.int64)

    def group_start(self, row: int) -> int:
        """The first sequence of the group that holds `row`."""
        return int(np.searchsorted(self.ends, row, side="right")) // self.group_sequences * self.group_sequences

    def pieces(self, start: int = 0, stop: int | None = None, *, should_stop=None, at: Position | None = None,
               on_group=None, sites: list | None = None) -> Iterator[tuple]:
        """(first row, rows [n, d_model] float16, their token ids [n] int32), covering rows
        [start, stop) in order, a group of sequences at a time. `at`: the Position of the group
        holding `start` (from position_from), where the corpus is read from. `on_group(first
        sequence, its Position)` is told of every group computed. `sites`: (layer_number,
        hook_point)s read from the same forward passes instead of the stream's own; the rows are
        then {site: rows} (a streaming sweep, engine.trainer.shared_stream)."""
        stop = self.n_rows if stop is None else min(stop, self.n_rows)
        if start >= stop:
            return
        skip = self.group_start(start)
        at = at or self._nearest(skip)
        if at is not None and at.sequence > skip:
            raise EngineError(f"Rows from {start} are read from sequence {skip}, not from sequence {at.sequence}")
        index, pending, group_at = (0 if at is None else at.sequence), [], None
        for position, chunk in self.source.positioned_chunks(at):
            for offset, (ids, keep) in enumerate(zip(chunk.ids, chunk.keep)):
                if index >= self.n_sequences:
                    break
                index += 1
                if index <= skip:
                    continue
                if not pending:
                    group_at = position.at(offset, ids)
                pending.append((ids, keep))
                if len(pending) == self.group_sequences or index == self.n_sequences:
                    first_sequence = index - len(pending)
                    row = int(self.ends[first_sequence - 1]) if first_sequence else 0
                    rows, tokens = (self._forward(pending, first_sequence, should_stop) if sites is None
                                    else self._forward(pending, first_sequence, should_stop, sites=sites))
                    self._remember(first_sequence, group_at)
                    if sites is None:  # a shared pass keeps nothing for its lead (engine.trainer.shared_stream)
                        self._keep(row, rows, tokens)
                    if on_group is not None:
                        on_group(first_sequence, group_at)
                    pending = []
                    lo, hi = max(start, row), min(stop, row + len(tokens))
                    if lo < hi:
                        cut = slice(lo - row, hi - row)
                        yield lo, rows[cut] if sites is None else {site: r[cut] for site, r in rows.items()}, tokens[cut]
                    if row + len(tokens) >= stop:
                        return
            if index >= self.n_sequences:
                break
        if index < self.n_sequences:
            raise EngineError(f"Corpus '{self.source.path.name}' ended early: it changed while the run read it")

    def sequences_from(self, row: int, *, max_rows: int | None = None) -> tuple:
        """(the sequences from the one holding `row` to the pass's last, or to the first that
        reaches `max_rows` rows past `row`; the row the first starts at): a tokenizing pass, the
        model does not run."""
        first = int(np.searchsorted(self.ends, row, side="right"))
        last = self.n_sequences if max_rows is None else min(
            self.n_sequences, int(np.searchsorted(self.ends, row + max_rows, side="left")) + 1)
        at = self._nearest(first)
        parts, index = [], 0 if at is None else at.sequence
        for _, chunk in self.source.positioned_chunks(at):
            n = len(chunk.ids)
            lo, hi = max(first - index, 0), min(n, last - index)
            if lo < hi:
                parts.append(Sequences(ids=chunk.ids[lo:hi], keep=chunk.keep[lo:hi], prepend_bos=chunk.prepend_bos))
            index += n
            if index >= last:
                break
        return concatenate(parts), int(self.ends[first - 1]) if first else 0

    @property
    def kept_from(self) -> int | None:
        """The first row keep_from keeps (None: none kept)."""
        return self._kept_from

    def keep_from(self, row: int) -> None:
        """Keep the rows from `row` to the pass's end, with their tokens, whenever a read computes
        them (the last blocks of training, say): kept_rows then computes only the rest. They take
        (n_rows - row) x (d_model x 2 + 4) bytes from the first one computed."""
        self._kept_from = max(0, min(int(row), self.n_rows))
        self._kept = self._kept_tokens = self._kept_filled = None

    def kept_rows(self, *, should_stop=None) -> tuple[np.ndarray, np.ndarray]:
        """(rows [kept_from, n_rows) float16, their token ids): the ones computed already, the
        others computed now, from the first missing one (keep_from first)."""
        if self._kept_from is None:
            raise EngineError("kept_rows needs keep_from first")
        missing = (np.flatnonzero(~self._kept_filled) if self._kept is not None
                   else np.arange(self.n_rows - self._kept_from))
        if len(missing):
            for _ in self.pieces(self._kept_from + int(missing[0]), self.n_rows, should_stop=should_stop):
                pass
        return self._kept, self._kept_tokens

    def _keep(self, row: int, rows: np.ndarray, tokens: np.ndarray) -> None:
        if self._kept_from is None:
            return
        first = self._kept_from
        lo, hi = max(row, first), min(row + len(rows), self.n_rows)
        if lo >= hi:
            return
        if self._kept is None:
            n = self.n_rows - first
            self._kept = np.empty((n, self.d_model), dtype=np.float16)
            self._kept_tokens = np.empty(n, dtype=np.int32)
            self._kept_filled = np.zeros(n, dtype=bool)
        self._kept[lo - first : hi - first] = rows[lo - row : hi - row]
        self._kept_tokens[lo - first : hi - first] = tokens[lo - row : hi - row]
        self._kept_filled[lo - first : hi - first] = True

    def _remember(self, first_sequence: int, position: Position) -> None:
        self._known[first_sequence] = position
        if len(self._known) > _KNOWN_POSITIONS:
            for sequence in sorted(self._known)[1::2]:
                del self._known[sequence]

    def _nearest(self, sequence: int) -> Position | None:
        """The remembered Position nearest before `sequence` (None: read from the corpus's start)."""
        before = [s for s in list(self._known) if s <= sequence]
        return self._known[max(before)] if before else None

    def reader(self, start: int = 0, stop: int | None = None, *, should_stop=None,
               at: Position | None = None) -> "SequentialRows":
        return SequentialRows(self, start, stop, should_stop=should_stop, at=at)

    def seek_record(self, position: Position | None) -> dict:
        """What a checkpoint keeps for a resume to read from `position` (None: the pass's start)
        without a tokenizing pass first: the Position, the sequences' rows and what they were
        computed from (position_from, engine.run.sources.saved_rows)."""
        if self._rows_kept is None:  # one tensor, shared by every record
            import torch

            self._rows_kept = torch.from_numpy(np.diff(self.ends, prepend=0).astype(np.int32))
        return {"fingerprint": self.fingerprint, "corpus_rows": self.corpus_rows, "rows_per_sequence": self._rows_kept,
                "position": None if position is None else position.to_dict()}

    def position_from(self, record: dict | None) -> Position | None:
        """The Position a seek_record holds, when it was taken on this pass over the corpus as it
        is now; None otherwise (a read then tokenizes the corpus up to its rows, and checks them)."""
        if not record or record.get("position") is None or record.get("fingerprint") != self.fingerprint:
            return None
        rows = np.asarray(record["rows_per_sequence"], dtype=np.int64)
        if len(rows) < self.n_sequences or not np.array_equal(np.cumsum(rows[: self.n_sequences]), self.ends):
            return None
        return Position.from_dict(record["position"])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) in one array (a fresh pass from the corpus's start)."""
        return self.reader(start, stop).read(start, stop)

    def _forward(self, group: list, first_sequence: int, should_stop, sites=None) -> tuple:
        """(the group's rows: an array, or {site: array} for `sites`; their token ids)."""
        ids = [g[0] for g in group]
        keep = [g[1] for g in group]
        lengths = np.array([int(k.sum()) for k in keep], dtype=np.int64)
        expected = np.diff(np.concatenate([[self.ends[first_sequence - 1] if first_sequence else 0],
                                           self.ends[first_sequence : first_sequence + len(group)]]))
        if not np.array_equal(lengths, expected):
            raise EngineError(f"Corpus '{self.source.path.name}' changed while the run read it: its sequences "
                              "no longer give the rows they gave when the run started")
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        input_lengths = np.array([len(seq) for seq in ids])
        order = [i for i in np.argsort(-input_lengths, kind="stable") if lengths[i] > 0]
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        n = int(lengths.sum())
        plan = _Plan(ids=ids, keep=keep, lengths=lengths, offsets=offsets, batches=batches, n_tokens=n,
                     d_model=self.d_model, n_texts=len(ids), hook_point=self.hook_point, prepend_bos=False,
                     exclude_special_tokens=False)
        rows = {site: np.empty((n, self.d_model), dtype=np.float16) for site in (sites or [None])}
        self.forward_batches += len(batches)
        if n:
            try:
                if sites is None:
                    extraction._run_batches(self.loaded, plan, rows[None], layer_number=self.layer_number,
                                            on_progress=None, should_stop=should_stop)
                else:  # one forward per batch for every site, stopped after the deepest
                    capture_batches(self.loaded, plan, [(layer, point, rows[(layer, point)]) for layer, point in sites],
                                    on_progress=None, should_stop=should_stop)
            except BaseException as err:
                self.error = err  # the caller names the model's forward as where a run failed
                raise
        tokens = np.fromiter((t for seq, k in zip(ids, keep) for t, kept in zip(seq, k) if kept), dtype=np.int32, count=n)
        return (rows[None] if sites is None else rows), tokens


class SequentialRows:
    """Rows of a stream read front to back (each read starts at or after the previous one's
    start): what the trainer's blocks and the feature analysis' chunks do. Holds only the rows
    from the last read's start on."""

    def __init__(self, stream: ActivationStream, start: int, stop: int | None, *, should_stop=None,
                 at: Position | None = None):
        self.stream = stream
        self.shape = (stream.n_rows if stop is None else min(stop, stream.n_rows), stream.d_model)
        self.dtype = stream.dtype
        self._groups = {}  # first sequence: Position, of the groups from the one holding the last read's start on
        self._pieces = stream.pieces(start, stop, should_stop=should_stop, at=at, on_group=self._groups.__setitem__)
        self._first = start  # the row _buffer[0] holds
        self._buffer = np.zeros((0, stream.d_model), dtype=np.float16)
        self._tokens = np.zeros(0, dtype=np.int32)

    def read(self, lo: int, hi: int) -> np.ndarray:
        rows, _ = self.read_with_tokens(lo, hi)
        return rows

    def read_with_tokens(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        if lo < self._first:
            raise EngineError(f"Rows are read front to back: row {lo} is behind row {self._first}")
        drop = min(lo - self._first, len(self._buffer))
        self._buffer, self._tokens = self._buffer[drop:], self._tokens[drop:]
        self._first += drop
        behind = self.stream.group_start(lo)
        for sequence in [s for s in self._groups if s < behind]:
            del self._groups[sequence]
        parts, tokens = [self._buffer], [self._tokens]
        have = self._first + len(self._buffer)
        while have < hi:
            try:
                row, rows, ids = next(self._pieces)
            except StopIteration:
                break
            parts.append(rows)
            tokens.append(ids)
            have = row + len(rows)
        self._buffer = np.concatenate(parts) if len(parts) > 1 else self._buffer
        self._tokens = np.concatenate(tokens) if len(tokens) > 1 else self._tokens
        if have < hi:
            raise EngineError(f"The stream ended at row {have}, before row {hi}")
        return self._buffer[lo - self._first : hi - self._first], self._tokens[lo - self._first : hi - self._first]

    def position(self, row: int) -> Position:
        """The Position of the group that holds `row`, a row of the last read (ActivationStream.pieces' `at`)."""
        return self._groups[self.stream.group_start(row)]
