"""Reading a corpus: a text file (one sequence per non-empty line) or a dataset whose `text_field`
column holds one document per row (JSON lines, Parquet, CSV, Arrow IPC, a `datasets` folder).

`iter_documents` streams documents, never holding the corpus in memory; `scan_corpus` reads it
once, counts it, and raises CorpusError with what to fix. The format is decided by the file's
suffix (`corpus_format`), or a folder is a dataset written by `datasets.Dataset.save_to_disk`.

`read_documents` gives each document with its cursor: a tuple of ints that a later read starts at
to give that document first, seeking past what comes before as far as the format allows. A text
file or JSON lines seeks to the line's byte; Parquet to its row group, an Arrow IPC file to its
record batch (the rows before it in the group or batch are sliced off, not decoded). An Arrow
stream (a `datasets` shard) and CSV cannot seek: their earlier batches are read again, and
skipped whole, but not decoded to text. A cursor holds for the file it came from, as it was
(`corpus_fingerprint` tells when that changed)."""

import codecs
import itertools
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq

from engine.errors import CorpusError

FORMATS = ("txt", "jsonl", "parquet", "csv", "arrow", "dataset")
SUFFIXES = {".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".csv": "csv",
            ".arrow": "arrow"}
_ACCEPTED = ".txt, .jsonl (or .ndjson), .parquet, .csv, .arrow, or a folder written by datasets' save_to_disk"
_BATCH_ROWS = 1024  # rows per Arrow batch (Parquet's read as dictionaries stay compact until decoded)
# Text decoded into Python strings at once, at most (a batch is decoded in slices of this many bytes),
# and the largest document any reader decodes: both checked on the column's lengths, before decoding,
# so a small file whose dictionary or compression expands to gigabytes is refused, not decoded.
_DECODE_BYTES = 64 << 20
MAX_DOCUMENT_BYTES = 64 << 20
_READ_BYTES = 1 << 20


def read_corpus(path: Path) -> list[str]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CorpusError(f"Corpus file '{path.name}' does not exist") from None
    except UnicodeDecodeError as exc:
        raise CorpusError(
            f"Corpus '{path.name}' is not valid UTF-8 (byte {exc.start}): save it as UTF-8 text"
        ) from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise CorpusError(f"Corpus '{path.name}' has no non-empty lines")
    return lines


@dataclass(frozen=True)
class CorpusScan:
    format: str
    text_field: str
    documents: int
    lines: int  # non-empty lines over all documents: the sequences of the "lines" packing
    text_bytes: int  # UTF-8 bytes of all documents' text


def corpus_format(path: Path) -> str:
    path = Path(path)
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            splits = sorted(child.name for child in path.iterdir() if child.is_dir())
            example = f", e.g. '{path.name}/{splits[0]}'" if splits else ""
            raise CorpusError(
                f"'{path.name}' holds a DatasetDict (splits: {', '.join(splits) or 'none'}): "
                f"point at one split's folder{example}"
            )
        saved = (path / "state.json").is_file() or (path / "dataset_info.json").is_file()
        if saved and any(path.glob("*.arrow")):
            return "dataset"
        raise CorpusError(
            f"Folder '{path.name}' is not a dataset written by datasets' save_to_disk "
            f"(no state.json and .arrow files): use {_ACCEPTED}"
        )
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise CorpusError(f"'{path.name}' is not a corpus format miStudio reads: use {_ACCEPTED}")
    return fmt


def default_packing(fmt: str) -> str:
    """A text file's lines are its sequences, as since the seed; a dataset's documents are
    concatenated into full windows (engine.text.packing)."""
    if fmt not in FORMATS:
        raise CorpusError(f"Unknown corpus format {fmt!r}: the formats are {', '.join(FORMATS)}")
    return "lines" if fmt == "txt" else "concat"


def iter_documents(path: Path, *, text_field: str = "text", start: int = 0) -> Iterator[str]:
    """The corpus's documents in file order: a text file's non-empty lines, stripped; a dataset's
    `text_field` values as stored, null and blank ones skipped. `start` documents are skipped first."""
    documents = (document for document, _ in read_documents(path, text_field=text_field))
    return itertools.islice(documents, start, None) if start else documents


def read_documents(path: Path, *, text_field: str = "text", at: tuple | None = None) -> Iterator[tuple[str, tuple]]:
    """(document, its cursor) in file order, as iter_documents gives them, from the document whose
    cursor is `at` (the first when None)."""
    path = Path(path)
    return _READERS[corpus_format(path)](path, text_field, tuple(at) if at is not None else None)


def corpus_fingerprint(path: Path) -> list:
    """The size and modification time of each of the corpus's files: equal, its cursors still hold."""
    path = Path(path)
    files = [path / "state.json", *_dataset_files(path)] if corpus_format(path) == "dataset" else [path]
    try:
        return [[file.name, file.stat().st_size, file.stat().st_mtime_ns] for file in files]
    except FileNotFoundError:
        raise CorpusError(f"Corpus file '{path.name}' does not exist") from None


def scan_corpus(path: Path, *, text_field: str = "text", max_text_bytes: int | None = None) -> CorpusScan:
    """Read the corpus through once: its format, documents, lines and bytes of text. `max_text_bytes`:
    the most text it may decode to (a compressed or dictionary-encoded file can expand far past its
    size); past it, a CorpusError."""
    path = Path(path)
    fmt = corpus_format(path)
    if fmt == "csv":  # pyarrow says "invalid UTF8" without saying where
        _check_utf8(path)
    documents = lines = text_bytes = 0
    for document in iter_documents(path, text_field=text_field):
        documents += 1
        text_bytes += len(document.encode("utf-8", "surrogatepass"))
        if max_text_bytes is not None and text_bytes > max_text_bytes:
            raise CorpusError(f"'{path.name}' decodes to more than {max_text_bytes:,} bytes of text, the most a "
                              "corpus of its size may hold: store its text less compressed, or split it")
        lines += sum(1 for line in document.splitlines() if line.strip())
    if not documents:
        if fmt == "txt":
            raise CorpusError(f"Corpus '{path.name}' has no non-empty lines")
        raise CorpusError(
            f"'{path.name}' has no documents with text: every '{text_field}' value is null or blank"
        )
    return CorpusScan(format=fmt, text_field=text_field, documents=documents, lines=lines, text_bytes=text_bytes)


def scan_summary(path: str, text_field: str = "text", max_text_bytes: int | None = None) -> dict:
    """scan_corpus as plain values, for a caller that runs it in another process (mistudio.sandbox)."""
    return asdict(scan_corpus(Path(path), text_field=text_field, max_text_bytes=max_text_bytes))


def _open(path: Path):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise CorpusError(f"Corpus file '{path.name}' does not exist") from None


def _not_utf8(path: Path, offset: int) -> CorpusError:
    return CorpusError(f"Corpus '{path.name}' is not valid UTF-8 (byte {offset}): save it as UTF-8 text")


def _check_utf8(path: Path) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with _open(path) as handle:
        while chunk := handle.read(_READ_BYTES):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, offset + exc.start) from None
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise CorpusError(f"Corpus '{path.name}' ends in the middle of a UTF-8 character: it is truncated") from None


def _txt_documents(path: Path, text_field: str, at: tuple | None) -> Iterator[tuple[str, tuple]]:
    # Split at b"\n" (never inside a UTF-8 character), then as str.splitlines does: read_corpus's
    # lines. The cursor: the b"\n" line's byte, and the document's place among that line's.
    offset, skip = at or (0, 0)
    with _open(path) as handle:
        handle.seek(offset)
        for raw in handle:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, offset + exc.start) from None
            lines = [line for line in (line.strip() for line in text.splitlines()) if line]
            for number in range(skip, len(lines)):
                yield lines[number], (offset, number)
            offset, skip = offset + len(raw), 0


def _jsonl_documents(path: Path, text_field: str, at: tuple | None) -> Iterator[tuple[str, tuple]]:
    # The cursor: the line's byte, and its number (for the messages).
    offset, first = at or (0, 1)
    with _open(path) as handle:
        handle.seek(offset)
        for number, raw in enumerate(handle, start=first):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, offset + exc.start) from None
            cursor, offset = (offset, number), offset + len(raw)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(
                    f"Bad JSON at line {number} of '{path.name}' ({exc.msg}, column {exc.colno}): "
                    "each line must be one JSON object"
                ) from None
            except RecursionError:
                raise CorpusError(
                    f"Line {number} of '{path.name}' nests arrays or objects too deeply to read: each line must be "
                    f'one flat JSON object, e.g. {{"{text_field}": "..."}}'
                ) from None
            if not isinstance(record, dict):
                raise CorpusError(
                    f"Line {number} of '{path.name}' is not a JSON object (it is {_json_kind(record)}): "
                    f'each line must be one object, e.g. {{"{text_field}": "..."}}'
                )
            if text_field not in record:
                texts = [key for key, value in record.items() if isinstance(value, str)]
                raise _no_column(path.name, text_field, list(record), texts, kind="field", where=f" at line {number}")
            value = record[text_field]
            if value is None:
                continue
            if not isinstance(value, str):
                raise CorpusError(
                    f"Field '{text_field}' at line {number} of '{path.name}' is not text: it is {_json_kind(value)}"
                )
            if value.strip():
                yield value, cursor


def _json_kind(value) -> str:
    kinds = {bool: "a boolean", int: "a number", float: "a number", list: "an array", dict: "an object",
             str: "a string", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


def _no_column(name: str, text_field, names, texts, *, kind="column", where="") -> CorpusError:
    listed = ", ".join(f"'{name}'" for name in names) or "none"
    hint = f"; send text_field={texts[0]}" if texts else ""
    return CorpusError(f"No {kind} '{text_field}'{where} in {name}: its {kind}s are {listed}{hint}")


def _is_text(arrow_type) -> bool:
    types = pa.types
    if types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return (types.is_string(arrow_type) or types.is_large_string(arrow_type) or types.is_string_view(arrow_type)
            or types.is_null(arrow_type))  # a column of nulls only: no documents, said by scan_corpus


def _check_column(name: str, schema, text_field: str) -> None:
    texts = [field.name for field in schema if _is_text(field.type) and not pa.types.is_null(field.type)]
    if text_field not in schema.names:
        raise _no_column(name, text_field, schema.names, texts)
    arrow_type = schema.field(text_field).type
    if not _is_text(arrow_type):
        hint = f"; send text_field={texts[0]}" if texts else ""
        raise CorpusError(f"Column '{text_field}' in {name} is not text: its type is {arrow_type}{hint}")


def _batch_documents(batches, text_field: str, name: str | None = None, *, skip: int = 0) -> Iterator[tuple[str, int]]:
    """(document, its row among the batches' rows), from row `skip` on: the batches before it are
    passed over and the rows before it sliced off, never decoded."""
    row = 0
    try:
        for batch in batches:
            if row + batch.num_rows > skip:
                lo = max(skip - row, 0)
                column = batch.column(text_field)
                # A file's offsets and lengths are checked against its buffers before any value is
                # read: a forged offset would otherwise read past the memory map (a crash, not an error).
                column.validate(full=True)
                for first, piece in _decodable_slices(column.slice(lo), name, row + lo):
                    for number, value in enumerate(piece.to_pylist(), start=first):
                        if value is not None and value.strip():
                            yield value, number
            row += batch.num_rows
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        if name is None:  # CSV: its reader's own message (_csv_documents)
            raise
        raise CorpusError(f"'{name}' is damaged: {exc}") from None


def _dictionary_encoded(metadata, column_name: str) -> bool:
    """Whether any row group stores the column with a dictionary."""
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        for index in range(row_group.num_columns):
            chunk = row_group.column(index)
            if chunk.path_in_schema == column_name and any("DICTIONARY" in e for e in chunk.encodings):
                return True
    return False


def _decodable_slices(column, name: str | None, first_row: int):
    """(first row, slice) of a text column, each slice decoding to at most _DECODE_BYTES (one row at
    least), from the lengths alone: a dictionary's values are not expanded to find them."""
    if pa.types.is_dictionary(column.type):
        lengths = pc.binary_length(column.dictionary).take(column.indices)
    else:
        lengths = pc.binary_length(column)
    lengths = np.asarray(lengths.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
    if len(lengths) and int(lengths.max()) > MAX_DOCUMENT_BYTES:
        at = int(lengths.argmax())
        raise CorpusError(f"Row {first_row + at} of '{name}' holds a document of {int(lengths[at]):,} bytes, more than "
                          f"{MAX_DOCUMENT_BYTES:,}: split it into smaller documents")
    ends = np.cumsum(lengths)
    start = 0
    while start < len(lengths):
        done = int(ends[start - 1]) if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, done + _DECODE_BYTES, side="right")))
        yield first_row + start, column.slice(start, stop - start)
        start = stop


def _parquet_documents(path: Path, text_field: str, at: tuple | None) -> Iterator[tuple[str, tuple]]:
    try:
        with pq.ParquetFile(path) as parquet:
            _check_column(path.name, parquet.schema_arrow, text_field)
            dictionary = _dictionary_encoded(parquet.metadata, text_field)
        # The text column as dictionaries where the file stores it so: values stay indices until a
        # slice is decoded (_decodable_slices). A plain column is read as it is (no hashing).
        parquet = pq.ParquetFile(path, read_dictionary=[text_field] if dictionary else None)
    except FileNotFoundError:
        raise CorpusError(f"Corpus file '{path.name}' does not exist") from None
    except (pa.ArrowException, OSError) as exc:
        raise CorpusError(f"'{path.name}' is not a Parquet file ({exc})") from None
    with parquet:
        # The cursor: the row group, and the row in it.
        first, skip = at or (0, 0)
        for group in range(first, parquet.num_row_groups):
            batches = parquet.iter_batches(batch_size=_BATCH_ROWS, row_groups=[group], columns=[text_field])
            for value, row in _batch_documents(batches, text_field, path.name, skip=skip if group == first else 0):
                yield value, (group, row)


def _arrow_documents(path: Path, text_field: str, at: tuple | None, name: str | None = None) -> Iterator[tuple[str, tuple]]:
    # Memory-mapped: a batch's other columns are never read. `datasets` writes the stream format.
    try:
        source = pa.memory_map(str(path))
    except FileNotFoundError:
        raise CorpusError(f"Corpus file '{path.name}' does not exist") from None
    except (pa.ArrowException, OSError) as exc:
        raise CorpusError(f"'{path.name}' is not an Arrow IPC file or stream ({exc})") from None
    # The cursor: the record batch, and the row in it. A file reads its batch directly; a stream
    # passes over the batches before it (memory-mapped: their text is never decoded).
    first, skip = at or (0, 0)
    with source:
        try:
            reader = pa_ipc.open_file(source)
            schema = reader.schema
            batches = ((i, reader.get_batch(i)) for i in range(first, reader.num_record_batches))
        except pa.ArrowInvalid:
            source.seek(0)
            try:
                reader = pa_ipc.open_stream(source)
            except (pa.ArrowException, OSError) as exc:
                raise CorpusError(f"'{path.name}' is not an Arrow IPC file or stream ({exc})") from None
            schema = reader.schema
            batches = itertools.islice(enumerate(reader), first, None)
        _check_column(name or path.name, schema, text_field)
        try:
            for number, batch in batches:
                for value, row in _batch_documents([batch], text_field, name or path.name,
                                                   skip=skip if number == first else 0):
                    yield value, (number, row)
        except (pa.ArrowException, OSError) as exc:  # a batch cut short
            raise CorpusError(f"'{name or path.name}' is damaged: {exc}") from None


def _csv_documents(path: Path, text_field: str, at: tuple | None) -> Iterator[tuple[str, tuple]]:
    try:
        with _open(path) as handle, pa_csv.open_csv(handle) as header:
            names = header.schema.names
        if text_field not in names:
            raise _no_column(path.name, text_field, names, [])
        # CSV has no types: the column is read as text, whatever it looks like.
        options = pa_csv.ConvertOptions(include_columns=[text_field], column_types={text_field: pa.string()})
        # The cursor: the row (CSV cannot seek: the rows before it are parsed again, not decoded to text).
        with _open(path) as handle, pa_csv.open_csv(handle, convert_options=options) as reader:
            for value, row in _batch_documents(reader, text_field, skip=at[0] if at else 0):
                yield value, (row,)
    except pa.ArrowInvalid as exc:
        raise CorpusError(f"'{path.name}' does not parse as CSV: {exc}") from None


def _dataset_documents(path: Path, text_field: str, at: tuple | None) -> Iterator[tuple[str, tuple]]:
    # The cursor: the shard, and the shard's own cursor.
    first, *inner = at or (0,)
    for shard, arrow_file in enumerate(_dataset_files(path)[first:], start=first):
        for value, cursor in _arrow_documents(arrow_file, text_field, tuple(inner) if shard == first and inner else None,
                                              name=path.name):
            yield value, (shard, *cursor)


def _dataset_files(path: Path) -> list[Path]:
    """The shards in the order save_to_disk recorded (state.json); sorted by name without one. A
    shard named outside the folder (a path, `..`) is refused: state.json is the uploader's."""
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        names = [entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return sorted(path.glob("*.arrow"))
    for name in names:
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise CorpusError(f"'{path.name}/state.json' names a shard outside the folder ({name!r}): a dataset's "
                              "shards are files in its own folder")
    return [path / name for name in names]


_READERS = {"txt": _txt_documents, "jsonl": _jsonl_documents, "parquet": _parquet_documents,
            "csv": _csv_documents, "arrow": _arrow_documents, "dataset": _dataset_documents}
