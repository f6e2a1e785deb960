"""How a corpus's documents become the model's input sequences (`packing`), read as a stream.

- "lines": every non-empty line of every document is one sequence (a .txt corpus's behaviour
  since the seed), truncated at max_sequence_length;
- "documents": every document is one sequence, truncated at max_sequence_length;
- "concat": documents are tokenized, each followed by the tokenizer's EOS, joined, and cut into
  windows of exactly max_sequence_length tokens, a BOS at the start of each where the model
  expects one (SAELens' default, its activation store's `context_size`; an encoder's windows are
  wrapped in its own CLS and SEP); the last, shorter window is dropped, so nothing is padded.

Sequences come in chunks (engine.text.sequences.Sequences) of a few hundred documents: a corpus is
never whole in memory. Which positions are rows (special tokens' are not) is engine.text.sequences'.

A pass can start at any sequence's Position (`chunks(start)`): the corpus is read from the cursor
of the document its chunk starts at (engine.text.corpus.read_documents), so nothing before that chunk
is tokenized again, and the chunk's sequences before it are dropped.
"""
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from engine.text.corpus import corpus_fingerprint, corpus_format, default_packing, iter_documents, read_documents
from engine.errors import CorpusError
from engine.text.sequences import Sequences, effective_prepend_bos, encode, sequences_of

PACKINGS = ("lines", "documents", "concat")
# Documents tokenized in one call of the tokenizer.
_CHUNK_DOCUMENTS = 256


@dataclass(frozen=True)
class Position:
    """Where a sequence of a pass starts, in terms a pass can resume at without reading what comes
    before: its chunk's first document, and what the chunk carries in from before it."""

    sequence: int = 0  # the sequence's number in the pass
    cursor: tuple | None = None  # engine.text.corpus's cursor of its chunk's first document (None: the corpus's first)
    line: int = 0  # "lines": the lines of that document before the chunk's first line
    carried: tuple = ()  # "concat": the tokens before that document that open the chunk's first window
    skip: int = 0  # the chunk's sequences before this one
    digest: int | None = None  # the sequence's token ids' CRC-32: a resume checks the corpus gives it again

    def at(self, offset: int, ids) -> "Position":
        """The position of the sequence `offset` sequences further into the same chunk, whose ids are `ids`."""
        return replace(self, sequence=self.sequence + offset, skip=self.skip + offset, digest=ids_digest(ids))

    def to_dict(self) -> dict:
        """Plain numbers and lists (a checkpoint holds it)."""
        values = asdict(self)
        values["cursor"] = None if self.cursor is None else list(self.cursor)
        values["carried"] = list(self.carried)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "Position":
        cursor = values.get("cursor")
        return cls(sequence=int(values["sequence"]), cursor=None if cursor is None else tuple(int(c) for c in cursor),
                   line=int(values["line"]), carried=tuple(int(t) for t in values["carried"]), skip=int(values["skip"]),
                   digest=None if values.get("digest") is None else int(values["digest"]))


def ids_digest(ids) -> int:
    return zlib.crc32(np.asarray(ids, dtype=np.int64).tobytes())


@dataclass
class SequenceSource:
    """A corpus as sequences, re-readable: every iteration streams it from its file again."""

    path: Path
    tokenizer: object
    max_sequence_length: int
    causal: bool
    prepend_bos: bool
    exclude_special_tokens: bool
    packing: str | None = None  # None: the format's default (engine.text.corpus.default_packing)
    text_field: str = "text"

    def __post_init__(self):
        self.path = Path(self.path)
        if self.packing is None:
            self.packing = default_packing(corpus_format(self.path))
        if self.packing not in PACKINGS:
            raise CorpusError(f"packing must be one of {', '.join(PACKINGS)}, not {self.packing!r}")
        if self.max_sequence_length < 1:
            raise CorpusError("max_sequence_length must be at least 1")
        if self.packing == "concat" and self._room() < 1:
            raise CorpusError(f"concat packing needs max_sequence_length above {self.max_sequence_length}: its "
                              "windows have no room for text beside the model's special tokens")

    @property
    def bos(self) -> bool:
        """A BOS is put in front of every sequence (engine.text.sequences.effective_prepend_bos)."""
        return effective_prepend_bos(self.tokenizer, causal=self.causal, prepend_bos=self.prepend_bos)

    def chunks(self, start: Position | None = None) -> Iterator[Sequences]:
        """The sequences in corpus order, a chunk at a time, from `start` on (the first when None)."""
        for _, chunk in self.positioned_chunks(start):
            yield chunk

    def positioned_chunks(self, start: Position | None = None) -> Iterator[tuple[Position, Sequences]]:
        """(the position of the chunk's first sequence, the chunk), from `start` on. A start whose
        sequence the corpus no longer gives (its digest) is a CorpusError."""
        start = start or Position()
        documents = read_documents(self.path, text_field=self.text_field, at=start.cursor)
        if self.packing == "concat":
            chunks = self._windows(documents, start)
        else:
            chunks = self._encoded(documents, start)
        first = True
        for position, chunk in chunks:
            if first and start.skip:
                chunk = Sequences(ids=chunk.ids[start.skip:], keep=chunk.keep[start.skip:], prepend_bos=chunk.prepend_bos)
                position = replace(start, digest=None)
            if first and start.digest is not None and (not chunk.ids or ids_digest(chunk.ids[0]) != start.digest):
                raise CorpusError(f"Corpus '{self.path.name}' changed: it no longer gives sequence {start.sequence} "
                                  "where it did")
            first = False
            if chunk.ids:
                yield position, chunk

    def fingerprint(self) -> dict:
        """What the pass's sequences depend on: the corpus's files as they are now, and how their
        text is tokenized and packed. Equal, a Position taken before still holds."""
        tokenizer = self.tokenizer
        return {"corpus": corpus_fingerprint(self.path), "packing": self.packing, "text_field": self.text_field,
                "max_sequence_length": self.max_sequence_length, "causal": self.causal, "bos": self.bos,
                "exclude_special_tokens": self.exclude_special_tokens,
                "tokenizer": [type(tokenizer).__name__, len(tokenizer), sorted(getattr(tokenizer, "all_special_ids", []))]}

    def rows_per_sequence(self, max_rows: int | None = None) -> np.ndarray:
        """Rows of every sequence (int32), one tokenizing pass over the corpus (the model does not run)."""
        return self.lengths(max_rows)[0]

    def lengths(self, max_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(rows, input length) of every sequence (int32 each), one tokenizing pass over the corpus
        (the model does not run): what an extraction plans its file and batches from. With
        `max_rows`, of the first sequences only, up to the chunk where they reach it (a run that
        reads no further need not tokenize a larger corpus to its end)."""
        rows, inputs, total = [], [], 0
        for chunk in self.chunks():
            rows.append(chunk.rows.astype(np.int32))
            inputs.append(chunk.input_lengths.astype(np.int32))
            total += int(rows[-1].sum())
            if max_rows is not None and total >= max_rows:
                break
        if not rows or not any(part.any() for part in rows):
            raise CorpusError(self._no_rows_message())
        return np.concatenate(rows), np.concatenate(inputs)

    def read(self, n_rows: int | None = None) -> Sequences:
        """The sequences in memory, the first ones giving n_rows rows (all when None)."""
        parts, total = [], 0
        for chunk in self.chunks():
            if n_rows is not None:
                rows = chunk.rows
                enough = np.flatnonzero(np.cumsum(rows) + total >= n_rows)
                if len(enough):
                    cut = int(enough[0]) + 1
                    parts.append(Sequences(ids=chunk.ids[:cut], keep=chunk.keep[:cut], prepend_bos=chunk.prepend_bos))
                    break
                total += int(rows.sum())
            parts.append(chunk)
        from engine.text.sequences import concatenate

        sequences = concatenate(parts)
        if not sequences.ids or not sequences.rows.any():
            raise CorpusError(self._no_rows_message())
        return sequences

    def _no_rows_message(self) -> str:
        if next(iter(iter_documents(self.path, text_field=self.text_field)), None) is None:
            if corpus_format(self.path) == "txt":
                return f"Corpus '{self.path.name}' has no non-empty lines"
            return f"Corpus '{self.path.name}' has no documents with text in '{self.text_field}'"
        if self.packing == "concat":
            return (f"Corpus '{self.path.name}' gives no full window of {self.max_sequence_length} tokens with concat "
                    "packing: lower max_sequence_length or give it more text")
        return f"Corpus '{self.path.name}' produced no tokens: give it some text"

    def _encoded(self, documents, start: Position) -> Iterator[tuple[Position, Sequences]]:
        """"lines" and "documents": a sequence per text, _CHUNK_DOCUMENTS texts a chunk."""
        sequence = start.sequence - start.skip
        for texts in _batched(self._texts(documents, start.line), _CHUNK_DOCUMENTS):
            _, cursor, line = texts[0]
            chunk = encode(self.tokenizer, [text for text, _, _ in texts], max_sequence_length=self.max_sequence_length,
                           causal=self.causal, prepend_bos=self.prepend_bos, exclude_special_tokens=self.exclude_special_tokens)
            yield Position(sequence=sequence, cursor=cursor, line=line), chunk
            sequence += len(chunk.ids)

    def _texts(self, documents, first_line: int = 0) -> Iterator[tuple[str, tuple, int]]:
        """(text, its document's cursor, its line among the document's): the first document's
        first `first_line` lines are skipped."""
        if self.packing == "documents":
            for document, cursor in documents:
                yield document, cursor, 0
            return
        for document, cursor in documents:
            lines = (line for line in (line.strip() for line in document.splitlines()) if line)
            for number, line in enumerate(lines):
                if number >= first_line:
                    yield line, cursor, number
            first_line = 0

    def _room(self) -> int:
        """Text tokens a concat window holds beside the special tokens put around it."""
        if not self.causal:
            return self.max_sequence_length - self.tokenizer.num_special_tokens_to_add(pair=False)
        return self.max_sequence_length - (1 if self.bos else 0)

    def _windows(self, documents, start: Position) -> Iterator[tuple[Position, Sequences]]:
        """"concat": the windows of _CHUNK_DOCUMENTS documents a chunk, after the tokens the
        documents before carried in (`pending`)."""
        tokenizer, room = self.tokenizer, self._room()
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is None and not self.causal:
            eos = getattr(tokenizer, "sep_token_id", None)
        pending = np.asarray(start.carried, dtype=np.int64)
        sequence = start.sequence - start.skip
        for batch in _batched(documents, _CHUNK_DOCUMENTS):
            position = Position(sequence=sequence, cursor=batch[0][1], carried=tuple(pending.tolist()))
            encoded = tokenizer([text for text, _ in batch], add_special_tokens=False, padding=False, truncation=False,
                                verbose=False)["input_ids"]
            pieces = [pending]
            for ids in encoded:
                pieces.append(np.asarray(ids, dtype=np.int64))
                if eos is not None:
                    pieces.append(np.asarray([eos], dtype=np.int64))
            stream = np.concatenate(pieces)
            n = len(stream) // room
            pending = stream[n * room:]
            if n:
                yield position, sequences_of(tokenizer, [self._wrap(w) for w in stream[: n * room].reshape(n, room).tolist()],
                                             prepend_bos=self.bos, exclude_special_tokens=self.exclude_special_tokens)
                sequence += n

    def _wrap(self, window: list) -> list:
        if not self.causal:
            return list(self.tokenizer.build_inputs_with_special_tokens(window))
        return [self.tokenizer.bos_token_id, *window] if self.bos else window


def _batched(items, n: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch
