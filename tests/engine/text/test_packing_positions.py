"""A pass over a corpus resumed at a sequence's Position (engine.text.packing): it gives the same
sequences from there as a pass from the start, in every packing and format, and tokenizes none of
the documents before the chunk that holds it."""
import json

import pytest
from transformers import AutoTokenizer

from engine.errors import CorpusError
from engine.text.packing import Position, SequenceSource
from tests.engine.text.test_corpus_formats import write_arrow_stream, write_dataset, write_parquet

# Lines of several sizes, a few documents of several lines: chunks of 4 documents (or lines), and
# concat windows that carry a document's tokens over into the next chunk.
DOCUMENTS = [f"Document {i} says {'something ' * (i % 5)}here.\nIts line {i} two." for i in range(40)]
CHUNK = 4


class CountingTokenizer:
    """The tokenizer, counting the texts it is given."""

    def __init__(self, tokenizer):
        self.tokenizer, self.texts = tokenizer, 0

    def __call__(self, texts, **kwargs):
        self.texts += len(texts)
        return self.tokenizer(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def __len__(self):
        return len(self.tokenizer)


@pytest.fixture(scope="module")
def gpt2_tokenizer(tiny_gpt2_dir):
    return AutoTokenizer.from_pretrained(tiny_gpt2_dir)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr("engine.text.packing._CHUNK_DOCUMENTS", CHUNK)


def write_jsonl(path):
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCUMENTS), encoding="utf-8")
    return path


def write_txt(path):
    path.write_text("\n\n".join(DOCUMENTS) + "\n", encoding="utf-8")
    return path


def write_table(writer):
    rows = [{"id": i, "text": d} for i, d in enumerate(DOCUMENTS)]
    return lambda path: writer(path, rows=[{"id": r["id"], "body": r["text"]} for r in rows])


CORPORA = {"docs.jsonl": write_jsonl, "docs.txt": write_txt, "docs.parquet": write_table(write_parquet),
           "stream.arrow": write_table(write_arrow_stream), "saved": write_table(write_dataset)}


def source(path, tokenizer, packing, **overrides):
    text_field = "text" if path.suffix in (".jsonl", ".txt") else "body"
    values = dict(max_sequence_length=12, causal=True, prepend_bos=True, exclude_special_tokens=True)
    values.update(overrides)
    return SequenceSource(path, tokenizer, packing=packing, text_field=text_field, **values)


def positions(packed) -> list[tuple[Position, list]]:
    """Every sequence of a pass from the start, with its position."""
    return [(position.at(i, ids), ids) for position, chunk in packed.positioned_chunks()
            for i, ids in enumerate(chunk.ids)]


@pytest.mark.slow
@pytest.mark.parametrize("packing", ["lines", "documents", "concat"])
@pytest.mark.parametrize("name", CORPORA)
def test_a_pass_resumed_at_any_sequence_gives_the_same_sequences_from_there(tmp_path, gpt2_tokenizer, name, packing):
    packed = source(CORPORA[name](tmp_path / name), gpt2_tokenizer, packing)
    whole = positions(packed)
    assert len(whole) > 3 * CHUNK
    for number, (position, _) in enumerate(whole):
        assert position.sequence == number
        resumed = [ids for chunk in packed.chunks(start=position) for ids in chunk.ids]
        assert resumed == [ids for _, ids in whole[number:]]


@pytest.mark.parametrize("packing", ["lines", "concat"])
@pytest.mark.parametrize("name", ["docs.jsonl", "docs.txt"])
def test_a_resumed_pass_tokenizes_nothing_before_its_chunk(tmp_path, gpt2_tokenizer, name, packing):
    path = CORPORA[name](tmp_path / name)
    counting = CountingTokenizer(gpt2_tokenizer)
    packed = source(path, counting, packing)
    whole = positions(packed)
    texts_in_a_pass = counting.texts
    position, _ = whole[len(whole) * 3 // 4]
    counting.texts = 0
    assert [ids for chunk in packed.chunks(start=position) for ids in chunk.ids] == [ids for _, ids in whole[position.sequence:]]
    # The resume tokenized its chunk and what follows: a quarter of the pass, give or take a chunk.
    assert 0 < counting.texts <= texts_in_a_pass // 4 + CHUNK


def test_a_position_the_corpus_no_longer_gives_is_refused(tmp_path, gpt2_tokenizer):
    path = write_jsonl(tmp_path / "docs.jsonl")
    packed = source(path, gpt2_tokenizer, "concat")
    position, _ = positions(packed)[20]
    path.write_text(path.read_text().replace("Document", "Dokument"))  # the same bytes: its cursors still land on lines
    with pytest.raises(CorpusError, match="changed: it no longer gives sequence 20"):
        next(packed.chunks(start=position))


def test_a_position_survives_a_checkpoints_plain_values(tmp_path, gpt2_tokenizer):
    packed = source(write_jsonl(tmp_path / "docs.jsonl"), gpt2_tokenizer, "concat")
    position, _ = positions(packed)[13]
    assert position.carried and Position.from_dict(position.to_dict()) == position
