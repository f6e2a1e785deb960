"""Every corpus format trains: a JSONL, Parquet, CSV, Arrow file or a datasets folder, its text in
`text_field`, packed by concat (the dataset formats' default) into windows of exactly
max_sequence_length tokens, the activations streamed for a one-epoch job."""
import csv
import json

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from corpora.services import corpus_add_from_path
from tests.model_fixtures import SAMPLE_CORPUS
from training import services
from training.worker.job import job_run

pytestmark = pytest.mark.django_db(transaction=True)


def documents() -> list[str]:
    lines = SAMPLE_CORPUS.read_text(encoding="utf-8").splitlines()
    return ["\n".join(lines[i : i + 8]) for i in range(0, min(len(lines), 160), 8)]


def write(fmt: str, folder):
    texts, table = documents(), pa.table({"id": list(range(len(documents()))), "body": documents()})
    if fmt == "jsonl":
        path = folder / "docs.jsonl"
        path.write_text("".join(json.dumps({"body": t}) + "\n" for t in texts), encoding="utf-8")
    elif fmt == "parquet":
        path = folder / "docs.parquet"
        pq.write_table(table, path)
    elif fmt == "csv":
        path = folder / "docs.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "body"])
            writer.writerows(enumerate(texts))
    elif fmt == "arrow":
        path = folder / "docs.arrow"
        with ipc.new_file(str(path), table.schema) as writer:
            writer.write_table(table)
    else:
        import datasets

        path = folder / "docs"
        datasets.Dataset.from_dict({"body": texts}).save_to_disk(str(path))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv", "arrow", "dataset"])
def test_a_corpus_in_each_format_trains_in_concat_windows(fmt, alice, hub_models, tmp_path):
    corpus = corpus_add_from_path(owner=alice, path=write(fmt, tmp_path), text_field="body")
    job = services.job_create(owner=alice, enqueue=False, request=services.JobRequest(
        model_name="tiny/gpt2", corpus_file=corpus.name, layer_number=1, hidden_dim=32, max_epochs=1,
        max_sequence_length=16, min_loss=0))
    assert job.packing == "concat"
    job = job_run(job.id)
    assert job.status == "completed", job.message
    stats = job.training_stats
    assert stats["activations_cached"] is False and stats["tokens_trained"] > 0
    # The job's rows are those of concat windows of exactly 16 tokens (the BOS and the EOS between
    # documents no rows), as the engine packs this file with the model's tokenizer.
    from transformers import AutoTokenizer

    from engine.text.packing import SequenceSource

    packed = SequenceSource(corpus.path, AutoTokenizer.from_pretrained(hub_models / "tiny" / "gpt2"),
                            max_sequence_length=16, causal=True, prepend_bos=True, exclude_special_tokens=True,
                            text_field="body")
    assert packed.packing == "concat" and {len(ids) for ids in packed.read().ids} == {16}
    assert stats["tokens"] == packed.rows_per_sequence().sum()
    assert job.evaluation["ce_loss_reason"] is None
