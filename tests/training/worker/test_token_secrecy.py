"""The Hugging Face token of a real job is never stored in plaintext, logged, or written anywhere."""
import logging
from pathlib import Path

import pytest
from django.db import connection

from tests.django_fixtures import queued_tasks
from tests.model_fixtures import SAMPLE_CORPUS
from training.models import TrainingJob
from training.worker.job import job_run

SENTINEL = "hf_SENTINEL_a9c3e1f07b2d4c58"
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.slow
def test_a_job_leaves_no_trace_of_its_token(alice_api, upload, hub_models, data_dir, caplog, capfd,
                                             django_capture_on_commit_callbacks):
    caplog.set_level(logging.DEBUG)
    assert upload(SAMPLE_CORPUS.name, SAMPLE_CORPUS.read_bytes()).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_api.post("/api/v1/train", {
            "model_name": "tiny/llama", "corpus_file": SAMPLE_CORPUS.name, "layer_number": 1, "hidden_dim": 32,
            "max_epochs": 2, "min_loss": 0, "max_sequence_length": 16, "huggingface_token": SENTINEL,
        }, format="json")
    assert response.status_code == 200
    job = TrainingJob.objects.get(pk=response.json()["job_id"])
    # While the job may need it, the token is kept, encrypted.
    assert job.encrypted_hf_token and SENTINEL not in job.encrypted_hf_token

    job = job_run(job.id)
    assert job.status == "completed", job.message
    assert job.encrypted_hf_token == ""
    for path in ("status", "result"):
        assert SENTINEL not in alice_api.get(f"/api/v1/train/{job.id}/{path}").content.decode()

    needle = SENTINEL.encode()
    # Every row of every table, read back through SQL (what a dump of the database holds), and the
    # queued task, decoded, from whichever broker holds it.
    rows = database_rows()
    assert any(table == "training_trainingjob" for table, _ in rows)
    assert [table for table, row in rows if needle in row] == []
    tasks = queued_tasks()
    assert [task for task in tasks if job.id in task["args"]]  # the job's task, found and decoded
    assert [task for task in tasks if SENTINEL in repr(task)] == []

    searched = [p for p in data_dir.rglob("*") if p.is_file()]
    if connection.vendor == "sqlite":
        connection.close()  # flush SQLite's write-ahead log into the file we search
        database = Path(connection.settings_dict["NAME"])
        searched += [p for p in (database, Path(f"{database}-wal")) if p.exists()]
        assert database in searched
    for artifact in (job.activations_path, job.model_path, job.metadata_path, job.corpus.path):
        assert Path(artifact) in searched
    assert [str(p) for p in searched if needle in p.read_bytes()] == []
    captured = capfd.readouterr()
    assert SENTINEL not in caplog.text and SENTINEL not in captured.out and SENTINEL not in captured.err


def database_rows():
    """(table, the row's values as bytes) for every row of every table: on PostgreSQL the server's
    files are out of a test's reach, so the rows are what is searched (SQLite's file is searched too)."""
    rows = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            for row in cursor.fetchall():
                rows.append((table, b"\0".join(_as_bytes(value) for value in row)))
    return rows


def _as_bytes(value):
    if isinstance(value, (bytes, memoryview)):
        return bytes(value)
    return b"" if value is None else str(value).encode()
