"""How a corpus's documents become the model's input sequences (`packing`), read as a stream.

- "lines": every non-empty line of every document is one sequence (a .txt corpus's behaviour
  since the seed), truncated at max_sequence_length;
- "documents": every document is one sequence, truncated at max_sequence_length;
- "concat": documents are tokenized, each followed by the tokenizer's EOS, joined, and cut into
  windows of exactly max_sequence_length tokens, a BOS at the start of each where the model
  expects one (SAELens' default, its activation store's `context_size`; an encoder's windows are
  wrapped in its own CLS and SEP); the last, shorter window is dropped, so nothing is padded.

Sequences come in chunks (engine.sequences.Sequences) of a few hundred documents: a corpus is
never whole in memory. Which positions are rows (special tokens' are not) is engine.sequences'.
"""
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.corpus import corpus_format, default_packing, iter_documents
from engine.errors import CorpusError
from engine.sequences import Sequences, effective_prepend_bos, encode, sequences_of

PACKINGS = ("lines", "documents", "concat")
# Documents tokenized in one call of the tokenizer.
_CHUNK_DOCUMENTS = 256


@dataclass
class SequenceSource:
    """A corpus as sequences, re-readable: every iteration streams it from its file again."""

    path: Path
    tokenizer: object
    max_sequence_length: int
    causal: bool
    prepend_bos: bool
    exclude_special_tokens: bool
    packing: str | None = None  # None: the format's default (engine.corpus.default_packing)
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
        """A BOS is put in front of every sequence (engine.sequences.effective_prepend_bos)."""
        return effective_prepend_bos(self.tokenizer, causal=self.causal, prepend_bos=self.prepend_bos)

    def chunks(self) -> Iterator[Sequences]:
        """The sequences in corpus order, a chunk at a time."""
        documents = iter_documents(self.path, text_field=self.text_field)
        if self.packing == "concat":
            yield from self._windows(documents)
            return
        for texts in _batched(self._texts(documents), _CHUNK_DOCUMENTS):
            yield encode(self.tokenizer, texts, max_sequence_length=self.max_sequence_length, causal=self.causal,
                         prepend_bos=self.prepend_bos, exclude_special_tokens=self.exclude_special_tokens)

    def rows_per_sequence(self) -> np.ndarray:
        """Rows of every sequence (int32), one tokenizing pass over the corpus (the model does not run)."""
        parts = [chunk.rows.astype(np.int32) for chunk in self.chunks()]
        rows = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
        if not rows.any():
            raise CorpusError(self._no_rows_message())
        return rows

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
        from engine.sequences import concatenate

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

    def _texts(self, documents) -> Iterator[str]:
        if self.packing == "documents":
            yield from documents
            return
        for document in documents:
            for line in document.splitlines():
                if line := line.strip():
                    yield line

    def _room(self) -> int:
        """Text tokens a concat window holds beside the special tokens put around it."""
        if not self.causal:
            return self.max_sequence_length - self.tokenizer.num_special_tokens_to_add(pair=False)
        return self.max_sequence_length - (1 if self.bos else 0)

    def _windows(self, documents) -> Iterator[Sequences]:
        tokenizer, room = self.tokenizer, self._room()
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is None and not self.causal:
            eos = getattr(tokenizer, "sep_token_id", None)
        pending = np.zeros(0, dtype=np.int64)
        for texts in _batched(documents, _CHUNK_DOCUMENTS):
            encoded = tokenizer(texts, add_special_tokens=False, padding=False, truncation=False,
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
                yield sequences_of(tokenizer, [self._wrap(w) for w in stream[: n * room].reshape(n, room).tolist()],
                                   prepend_bos=self.bos, exclude_special_tokens=self.exclude_special_tokens)

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
