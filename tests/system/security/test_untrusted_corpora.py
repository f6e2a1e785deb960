"""An uploaded corpus is read in a child process with limits (mistudio.sandbox), never in the web
process: a forged file is a 400 that says what was refused, the web process goes on serving, and
nothing of the upload is left behind."""
import struct
import time

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from mistudio.sandbox import SandboxRefused, run_limited


def forged_arrow() -> bytes:
    """A two-row string table (Arrow IPC stream, as `datasets` writes) whose last offset was
    rewritten to 50,000,000: reading its values ran past the memory map and killed the process."""
    table = pa.table({"text": ["hello", "world"]})
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    data = bytearray(sink.getvalue().to_pybytes())
    at = data.find(struct.pack("<3i", 0, 5, 10))
    data[at + 8 : at + 12] = struct.pack("<i", 50_000_000)
    return bytes(data)


@pytest.mark.django_db
def test_a_forged_arrow_upload_is_a_400_and_the_web_process_serves_on(alice_api, upload, settings):
    from corpora.models import Corpus

    content = forged_arrow()
    assert len(content) < 600
    started = time.monotonic()
    response = upload("forged.arrow", content)
    assert response.status_code == 400, response.content
    assert "'forged.arrow' is damaged" in response.json()["detail"]
    assert time.monotonic() - started < 10
    assert not Corpus.objects.exists()
    assert not [p for p in (settings.DATA_DIR / "corpora").rglob("*") if p.is_file()]  # no partial file left
    # The same process goes on: a good corpus after it.
    assert upload("good.txt", b"one line\nanother line\n").status_code == 200


@pytest.mark.parametrize("target, needle", [
    ("crash", "crashed the reader (SIGSEGV)"),
    ("allocate", "needed more than 256 MiB (MISTUDIO_SANDBOX_MEMORY_BYTES)"),
    ("spin", "used more than 1 s of CPU (MISTUDIO_SANDBOX_CPU_S)"),
    ("sleep", "took longer than 2 s (MISTUDIO_SANDBOX_TIMEOUT_S)"),
])
@pytest.mark.slow
def test_the_child_is_stopped_by_each_limit_and_says_which(settings, target, needle):
    settings.SANDBOX_MEMORY_BYTES, settings.SANDBOX_CPU_S, settings.SANDBOX_TIMEOUT_S = 256 << 20, 1, 2
    started = time.monotonic()
    with pytest.raises(SandboxRefused, match=needle.replace("(", r"\(").replace(")", r"\)")):
        run_limited(f"tests.system.security.sandbox_targets:{target}", what="the test's input")
    assert time.monotonic() - started < 10


def test_the_child_answers_with_json_and_a_deep_structure_is_refused_not_a_crash(monkeypatch):
    assert run_limited("tests.system.security.sandbox_targets:answer", [1, "two"]) == {"echo": [1, "two"]}
    monkeypatch.setenv("MISTUDIO_SECRET_KEY", "the-parents-secret")
    assert not {"MISTUDIO_SECRET_KEY", "DATABASE_URL"} & set(run_limited("tests.system.security.sandbox_targets:environment"))
    with pytest.raises(SandboxRefused, match="RecursionError"):
        run_limited("tests.system.security.sandbox_targets:nested", 200_000)


@pytest.mark.django_db
def test_a_partial_upload_left_by_a_dead_request_is_removed(alice_api, upload, settings):
    import os

    from corpora.services import corpora_dir, partial_uploads_remove_stale

    folder = corpora_dir()
    stale, fresh = folder / "0123.part.txt", folder / "4567.part.parquet"
    for path in (stale, fresh):
        path.write_bytes(b"half of it")
    hours_ago = time.time() - 2 * settings.PARTIAL_UPLOAD_STALE_S
    os.utime(stale, (hours_ago, hours_ago))
    assert partial_uploads_remove_stale() == ["0123.part.txt"]
    assert not stale.exists() and fresh.exists()  # an upload still being written stays
    os.utime(fresh, (hours_ago, hours_ago))
    assert upload("next.txt", b"a line\n").status_code == 200  # the next upload sweeps too
    assert not fresh.exists()


@pytest.mark.django_db
def test_a_deeply_nested_jsonl_line_is_a_400(alice_api, upload):
    response = upload("deep.jsonl", b'{"text": "fine"}\n' + b"[" * 200_000 + b"]" * 200_000 + b"\n")
    assert response.status_code == 400, response.content
    assert response.json()["detail"].startswith("Line 2 of 'deep.jsonl' nests arrays or objects too deeply")


def parquet_bomb() -> bytes:
    """2,048 rows referring to one 1 MiB string through a dictionary, zstd: 523 bytes that decode
    to 2 GiB (the web process spent 8 s and 1.2 GB on it, and the quota counted 523 bytes)."""
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    column = pa.array(["x" * (1 << 20)] * 2048).dictionary_encode()
    pq.write_table(pa.table({"text": column}), sink, compression="zstd", use_dictionary=True)
    return sink.getvalue().to_pybytes()


@pytest.mark.slow
@pytest.mark.django_db
def test_a_parquet_file_that_decodes_to_gigabytes_is_a_400_at_once(alice_api, upload):
    from corpora.models import Corpus

    content = parquet_bomb()
    assert len(content) < 1000
    started = time.monotonic()
    response = upload("bomb.parquet", content)
    assert response.status_code == 400, response.content
    assert "'bomb.parquet' decodes to more than 16,777,216 bytes of text" in response.json()["detail"]
    assert time.monotonic() - started < 5
    assert not Corpus.objects.exists()


@pytest.mark.slow
@pytest.mark.django_db
def test_a_document_past_the_largest_is_refused_from_its_length(alice_api, upload, settings):
    import pyarrow.parquet as pq

    settings.CORPUS_MAX_TEXT_RATIO = 10**6  # the total allowed: the one document is what is refused
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"text": ["short", "y" * ((64 << 20) + 1)]}), sink, compression="zstd")
    response = upload("huge.parquet", sink.getvalue().to_pybytes())
    assert response.status_code == 400, response.content
    assert response.json()["detail"].startswith("Row 1 of 'huge.parquet' holds a document of 67,108,865 bytes")
