from pathlib import Path

import pytest

from corpora.models import Corpus

pytestmark = pytest.mark.django_db


def test_it_stores_a_utf8_corpus_and_reports_its_size_and_lines(upload, alice):
    content = "first line\nzweite Zeile äöü\nthird line\n".encode()
    response = upload("reviews.txt", content)
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["message"] == "File uploaded successfully"
    assert body["filename"] == "reviews.txt"
    assert body["size_bytes"] == len(content)
    assert body["lines_count"] == 3
    stored = Path(body["path"])
    assert stored.read_bytes() == content
    corpus = Corpus.objects.get(name="reviews.txt")
    assert corpus.owner == alice and corpus.path == str(stored)


def test_a_last_line_without_newline_counts(upload):
    assert upload("a.txt", b"one\ntwo").json()["lines_count"] == 2


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"", "empty"),
        (b"  \n\t\n", "whitespace"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        ("caf\u00e9".encode("latin-1") + b" au lait\n", "UTF-8"),
    ],
)
def test_it_refuses_files_that_are_not_usable_text(upload, content, needle):
    response = upload("bad.txt", content)
    assert response.status_code == 400
    assert needle in response.json()["detail"]
    assert not Corpus.objects.exists()


@pytest.mark.parametrize("name", ["../../etc/passwd", "..\\secrets.txt", "/abs/path.txt", ".hidden"])
def test_it_refuses_names_that_try_to_leave_the_corpus_folder(alice_api, name, data_dir):
    # Django's test client strips folders from file names, so the body is written by hand.
    body = (
        "--BOUNDARY\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: text/plain\r\n\r\nhello\n\r\n--BOUNDARY--\r\n"
    ).encode()
    response = alice_api.generic("POST", "/api/v1/upload", body, content_type="multipart/form-data; boundary=BOUNDARY")
    assert response.status_code == 400
    assert "not allowed" in response.json()["detail"]
    assert not Corpus.objects.exists()


def test_a_second_upload_with_the_same_name_is_a_conflict(upload):
    assert upload("same.txt", b"one\n").status_code == 200
    response = upload("same.txt", b"two\n")
    assert response.status_code == 409
    assert "already exists" in response.json()["detail"]
    assert Path(Corpus.objects.get().path).read_bytes() == b"one\n"


def test_a_request_without_a_file_says_which_field_to_send(alice_api):
    response = alice_api.post("/api/v1/upload", {}, format="multipart")
    assert response.status_code == 400
    assert "'file'" in response.json()["detail"]


def test_the_size_limit_is_enforced_while_the_file_streams_in(upload, settings, monkeypatch):
    from django.core.files.uploadhandler import TemporaryFileUploadHandler

    stored = []
    original = TemporaryFileUploadHandler.receive_data_chunk
    monkeypatch.setattr(TemporaryFileUploadHandler, "receive_data_chunk",
                        lambda self, data, start: stored.append(len(data)) or original(self, data, start))
    settings.CORPUS_MAX_BYTES = 100_000
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 0  # straight to the temporary-file handler
    response = upload("big.txt", b"x" * 1_000_000)
    assert response.status_code == 413
    assert "MISTUDIO_CORPUS_MAX_BYTES" in response.json()["detail"]
    assert not Corpus.objects.exists()
    # Refused after the first chunks, not after a megabyte was stored.
    assert sum(stored) <= 100_000


def test_a_declared_length_over_the_limit_is_refused_before_reading(alice_api, settings):
    settings.CORPUS_MAX_BYTES = 1000
    response = alice_api.generic("POST", "/api/v1/upload", b"--B\r\n", content_type="multipart/form-data; boundary=B",
                                 CONTENT_LENGTH=str(10_000_000))
    assert response.status_code == 413
