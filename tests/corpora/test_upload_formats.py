"""Uploads in the formats users have them: JSON lines, Parquet, CSV and Arrow, the text read from
`text_field`; the answer counts documents and lines, and a file the engine cannot read is a 400
that says what to fix, with nothing kept."""
import csv
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from corpora.models import Corpus
from engine.text.corpus import iter_documents

pytestmark = pytest.mark.django_db

BODIES = ["A first review.\nWith a second line.", None, "  ", "Zweite Rezension äöü"]
TABLE = pa.table({"id": [1, 2, 3, 4], "body": BODIES})
TEXTS = [body for body in BODIES if body and body.strip()]


def _parquet(table=TABLE):
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _arrow_stream():
    sink = io.BytesIO()
    with ipc.new_stream(sink, TABLE.schema) as writer:
        writer.write_table(TABLE)
    return sink.getvalue()


def _arrow_file():
    sink = io.BytesIO()
    with ipc.new_file(sink, TABLE.schema) as writer:
        writer.write_table(TABLE)
    return sink.getvalue()


def _jsonl():
    return "".join(json.dumps({"id": i, "body": body}) + "\n" for i, body in enumerate(BODIES)).encode()


def _csv():
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "body"])
    writer.writerows([i, body or ""] for i, body in enumerate(BODIES))
    return out.getvalue().encode()


@pytest.fixture
def send(alice_api):
    def do(name, content, **fields):
        return alice_api.post("/api/v1/upload", {"file": SimpleUploadedFile(name, content), **fields},
                              format="multipart")

    return do


@pytest.mark.parametrize("name,fmt,content", [
    ("reviews.jsonl", "jsonl", _jsonl()),
    ("reviews.parquet", "parquet", _parquet()),
    ("reviews.csv", "csv", _csv()),
    ("stream.arrow", "arrow", _arrow_stream()),
    ("file.arrow", "arrow", _arrow_file()),
])
@pytest.mark.slow
def test_each_format_is_stored_with_its_suffix_and_counted(send, alice, name, fmt, content):
    response = send(name, content, text_field="body")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["message"] == "File uploaded successfully" and body["filename"] == name
    assert (body["format"], body["text_field"]) == (fmt, "body")
    assert (body["documents_count"], body["lines_count"], body["size_bytes"]) == (2, 3, len(content))
    stored = Path(body["path"])
    assert stored.suffix == Path(name).suffix and stored.read_bytes() == content
    assert list(iter_documents(stored, text_field="body")) == TEXTS
    corpus = Corpus.objects.get(name=name)
    assert (corpus.owner, corpus.format, corpus.text_field, corpus.documents_count) == (alice, fmt, "body", 2)
    assert corpus.text_bytes == sum(len(text.encode()) for text in TEXTS)


def test_the_text_field_is_text_unless_sent(send):
    table = pa.table({"text": ["one", "two"]})
    body = send("plain.parquet", _parquet(table)).json()
    assert (body["text_field"], body["documents_count"]) == ("text", 2)


def test_a_text_file_answers_as_before_with_its_format_added(upload):
    body = upload("notes.txt", b"one\n\ntwo\n").json()
    assert (body["format"], body["text_field"], body["documents_count"], body["lines_count"]) == ("txt", "text", 2, 2)


def _refused(response, *needles):
    assert response.status_code == 400, response.json()
    detail = response.json()["detail"]
    for needle in needles:
        assert needle in detail, detail
    assert not Corpus.objects.exists()
    return detail


def test_a_missing_column_lists_the_columns_and_names_the_users_file(send, data_dir):
    detail = _refused(send("data.parquet", _parquet()))
    assert detail == "No column 'text' in data.parquet: its columns are 'id', 'body'; send text_field=body"
    assert not any((data_dir / "samples").iterdir())  # not the file, not its partial


def test_a_column_that_is_not_text_is_refused_with_its_type(send):
    _refused(send("data.parquet", _parquet(), text_field="id"), "Column 'id' in data.parquet is not text",
             "int64")


def test_bad_json_names_the_line(send):
    content = b'{"text": "fine"}\n{"text": "also fine"}\n{"text": broken}\n'
    _refused(send("data.jsonl", content), "Bad JSON at line 3 of 'data.jsonl'")


def test_a_parquet_whose_bytes_are_not_parquet_is_refused_as_they_arrive(send):
    _refused(send("data.parquet", b"id,text\n1,hello\n"), "'data.parquet' is not a Parquet file")


def test_an_arrow_whose_bytes_are_not_arrow_is_refused(send):
    _refused(send("data.arrow", _parquet()), "'data.arrow' is not an Arrow IPC file or stream")


def test_a_parquet_with_the_right_magic_but_broken_inside_is_refused_by_the_scan(send):
    _refused(send("data.parquet", b"PAR1 and then nothing that parses"), "'data.parquet' is not a Parquet file")


def test_an_unknown_suffix_names_the_accepted_formats(send):
    _refused(send("notes.docx", b"hello\n"), "'notes.docx' is not a corpus format", ".jsonl", ".parquet")


def test_a_dataset_file_over_the_size_limit_is_refused(send, settings):
    settings.CORPUS_MAX_BYTES = 1000
    big = _parquet(pa.table({"text": [f"row {i} " * 10 for i in range(500)]}))
    assert len(big) > 1000
    response = send("big.parquet", big)
    assert response.status_code == 413
    assert "MISTUDIO_CORPUS_MAX_BYTES" in response.json()["detail"]
    assert not Corpus.objects.exists()


def test_a_text_field_that_is_blank_is_the_default(send):
    assert send("plain.jsonl", b'{"text": "one"}\n', text_field="").json()["text_field"] == "text"
