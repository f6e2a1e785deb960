"""Corpora in the formats users have them: each is read as a stream of documents in file order,
null and blank values skipped, and a problem is a CorpusError that says what to fix."""
import csv
import json

import datasets
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from engine.text.corpus import (FORMATS, CorpusScan, corpus_format, corpus_fingerprint, default_packing, iter_documents,
                           read_documents, scan_corpus)
from engine.errors import CorpusError

ROWS = [
    {"id": 1, "body": "The first document.\nIts second line."},
    {"id": 2, "body": None},
    {"id": 3, "body": "   "},
    {"id": 4, "body": "  kept as stored  "},
    {"id": 5, "body": "Ünïcödé fifth"},
]
DOCUMENTS = ["The first document.\nIts second line.", "  kept as stored  ", "Ünïcödé fifth"]


BLANK_ROWS = [{"id": 1, "body": None}, {"id": 2, "body": " \n "}]


def _columns(rows):
    return {"id": [row["id"] for row in rows], "body": [row["body"] for row in rows]}


def write_jsonl(path, rows=ROWS):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_parquet(path, rows=ROWS):
    pq.write_table(pa.table(_columns(rows)), path, row_group_size=2)  # several row groups, read in order
    return path


def write_csv(path, rows=ROWS):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "body"])
        writer.writerows([row["id"], row["body"] or ""] for row in rows)
    return path


def write_arrow_file(path, rows=ROWS):
    table = pa.table(_columns(rows))
    with ipc.new_file(path, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=2):
            writer.write_batch(batch)
    return path


def write_arrow_stream(path, rows=ROWS):
    table = pa.table(_columns(rows))
    with ipc.new_stream(path, table.schema) as writer:
        writer.write_table(table, max_chunksize=2)
    return path


def write_dataset(path, rows=ROWS):
    datasets.Dataset.from_dict(_columns(rows)).save_to_disk(str(path), num_shards=2)
    return path


WRITERS = {
    "data.jsonl": write_jsonl,
    "data.parquet": write_parquet,
    "data.csv": write_csv,
    "file.arrow": write_arrow_file,
    "stream.arrow": write_arrow_stream,
    "saved": write_dataset,
}
FORMAT_OF = {"data.jsonl": "jsonl", "data.parquet": "parquet", "data.csv": "csv", "file.arrow": "arrow",
             "stream.arrow": "arrow", "saved": "dataset"}


@pytest.mark.parametrize("name", WRITERS)
def test_each_format_yields_its_text_column_in_order_skipping_nulls_and_blanks(tmp_path, name):
    path = WRITERS[name](tmp_path / name)
    assert corpus_format(path) == FORMAT_OF[name]
    assert list(iter_documents(path, text_field="body")) == DOCUMENTS


@pytest.mark.parametrize("name", WRITERS)
def test_start_skips_that_many_documents(tmp_path, name):
    path = WRITERS[name](tmp_path / name)
    assert list(iter_documents(path, text_field="body", start=1)) == DOCUMENTS[1:]
    assert list(iter_documents(path, text_field="body", start=3)) == []


@pytest.mark.parametrize("name", WRITERS)
def test_a_read_at_a_documents_cursor_starts_at_that_document(tmp_path, name):
    path = WRITERS[name](tmp_path / name)
    read = list(read_documents(path, text_field="body"))
    assert [document for document, _ in read] == DOCUMENTS
    assert len({cursor for _, cursor in read}) == len(DOCUMENTS)
    for number, (_, cursor) in enumerate(read):
        assert [document for document, _ in read_documents(path, text_field="body", at=cursor)] == DOCUMENTS[number:]


def test_a_text_files_cursor_seeks_to_its_line_and_counts_the_documents_a_line_splits_into(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("  first line \n\n\t\nsecond line\r\nthird\rfourth", encoding="utf-8")
    read = list(read_documents(path))
    assert read == [("first line", (0, 0)), ("second line", (17, 0)), ("third", (30, 0)), ("fourth", (30, 1))]
    assert list(read_documents(path, at=(30, 1))) == [("fourth", (30, 1))]


def test_a_corpus_fingerprint_changes_with_its_files(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl")
    before = corpus_fingerprint(path)
    assert corpus_fingerprint(path) == before
    write_jsonl(path, ROWS[:2])
    assert corpus_fingerprint(path) != before


@pytest.mark.parametrize("name", WRITERS)
def test_a_scan_counts_documents_lines_and_text_bytes(tmp_path, name):
    path = WRITERS[name](tmp_path / name)
    assert scan_corpus(path, text_field="body") == CorpusScan(
        format=FORMAT_OF[name], text_field="body", documents=3, lines=4,
        text_bytes=sum(len(document.encode()) for document in DOCUMENTS),
    )


def test_a_text_file_is_its_stripped_non_empty_lines(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("  first line \n\n\t\nsecond line\r\nthird\rfourth", encoding="utf-8")
    assert list(iter_documents(path)) == ["first line", "second line", "third", "fourth"]
    assert list(iter_documents(path, start=2)) == ["third", "fourth"]
    assert scan_corpus(path) == CorpusScan(format="txt", text_field="text", documents=4, lines=4,
                                         text_bytes=len("first linesecond linethirdfourth"))


def test_documents_are_a_stream_not_a_list(tmp_path):
    path = write_parquet(tmp_path / "data.parquet")
    documents = iter_documents(path, text_field="body")
    assert next(documents) == DOCUMENTS[0]


@pytest.mark.parametrize("name,fmt", [("a.txt", "txt"), ("a.JSONL", "jsonl"), ("a.ndjson", "jsonl"),
                                      ("a.parquet", "parquet"), ("a.csv", "csv"), ("a.arrow", "arrow")])
def test_the_format_is_decided_by_the_suffix(tmp_path, name, fmt):
    assert corpus_format(tmp_path / name) == fmt


def test_an_unknown_suffix_names_the_accepted_formats(tmp_path):
    with pytest.raises(CorpusError, match=r"'notes.docx' is not a corpus format.*\.txt, \.jsonl.*\.parquet, \.csv"):
        corpus_format(tmp_path / "notes.docx")


def test_a_dataset_dict_folder_says_to_point_at_one_split(tmp_path):
    split = datasets.Dataset.from_dict({"text": ["a"]})
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(CorpusError, match=r"DatasetDict .*point at one split's folder, e.g. 'dd/test'"):
        scan_corpus(tmp_path / "dd")


def test_a_folder_that_is_no_saved_dataset_is_refused(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(CorpusError, match="not a dataset written by datasets' save_to_disk"):
        corpus_format(tmp_path / "plain")


def test_the_default_packing_is_lines_for_text_and_concat_for_datasets():
    assert {fmt: default_packing(fmt) for fmt in FORMATS} == {
        "txt": "lines", "jsonl": "concat", "parquet": "concat", "csv": "concat", "arrow": "concat", "dataset": "concat"}


@pytest.mark.parametrize("name", ["data.jsonl", "data.parquet", "data.csv", "stream.arrow", "saved"])
def test_a_missing_column_lists_the_columns_there_are(tmp_path, name):
    path = WRITERS[name](tmp_path / name)
    with pytest.raises(CorpusError, match=rf"No (column|field) 'text'.* in {name}: its (column|field)s are"):
        scan_corpus(path)
    with pytest.raises(CorpusError, match=r"'id', 'body'"):
        scan_corpus(path)


def test_a_missing_parquet_column_suggests_the_text_one(tmp_path):
    path = write_parquet(tmp_path / "data.parquet")
    with pytest.raises(CorpusError) as refused:
        scan_corpus(path)
    assert str(refused.value) == "No column 'text' in data.parquet: its columns are 'id', 'body'; send text_field=body"


@pytest.mark.parametrize("name", ["data.parquet", "file.arrow", "saved"])
def test_a_column_that_is_not_text_names_its_type(tmp_path, name):
    path = WRITERS[name](tmp_path / name)
    with pytest.raises(CorpusError, match=rf"Column 'id' in {name} is not text: its type is int64"):
        scan_corpus(path, text_field="id")


def test_a_json_field_that_is_not_text_names_its_kind(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl")
    with pytest.raises(CorpusError, match="Field 'id' at line 1 of 'data.jsonl' is not text: it is a number"):
        scan_corpus(path, text_field="id")


def test_bad_json_names_its_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "one"}\n\n{"text": "two"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match="Bad JSON at line 4 of 'data.jsonl'"):
        scan_corpus(path)


def test_a_json_line_that_is_not_an_object_names_its_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "one"}\n["two"]\n', encoding="utf-8")
    with pytest.raises(CorpusError, match="Line 2 of 'data.jsonl' is not a JSON object \\(it is an array\\)"):
        scan_corpus(path)


def test_a_csv_that_does_not_parse_gives_pyarrows_message(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("text,id\nfine,1\nthree,fields,here\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="'data.csv' does not parse as CSV: .*Expected 2 columns, got 3"):
        scan_corpus(path)


@pytest.mark.parametrize("name,kind", [("data.parquet", "a Parquet file"), ("data.arrow", "an Arrow IPC file or stream")])
def test_a_file_that_is_not_what_its_suffix_says_is_refused(tmp_path, name, kind):
    path = tmp_path / name
    path.write_bytes(b"text\nnot really\n")
    with pytest.raises(CorpusError, match=f"'{name}' is not {kind}"):
        scan_corpus(path)


@pytest.mark.parametrize("name", WRITERS)
def test_a_corpus_with_no_text_at_all_is_refused(tmp_path, name):
    path = WRITERS[name](tmp_path / name, rows=BLANK_ROWS)
    with pytest.raises(CorpusError, match=f"'{name}' has no documents with text: every 'body' value is null or blank"):
        scan_corpus(path, text_field="body")


def test_a_text_file_of_blank_lines_has_no_non_empty_lines(tmp_path):
    path = tmp_path / "blank.txt"
    path.write_text("\n  \n\t\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="Corpus 'blank.txt' has no non-empty lines"):
        scan_corpus(path)


@pytest.mark.parametrize("name,content", [
    ("latin.txt", "first\ncafé\n"),
    ("latin.jsonl", '{"text": "ok"}\n{"text": "café"}\n'),
    ("latin.csv", "text\nok\ncafé\n"),
])
def test_invalid_utf8_names_the_byte_offset(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content.encode("latin-1"))
    offset = content.index("é")
    with pytest.raises(CorpusError, match=rf"'{name}' is not valid UTF-8 \(byte {offset}\)"):
        scan_corpus(path)


def test_a_missing_file_says_so(tmp_path):
    with pytest.raises(CorpusError, match="Corpus file 'gone.parquet' does not exist"):
        scan_corpus(tmp_path / "gone.parquet")


def test_a_truncated_arrow_stream_is_refused_as_damaged(tmp_path):
    path = write_arrow_stream(tmp_path / "cut.arrow", rows=[{"id": i, "body": "text " * 50} for i in range(40)])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CorpusError, match="'cut.arrow' is damaged"):
        scan_corpus(path, text_field="body")
