"""A corpus's documents as the model's sequences: lines, documents, and concat windows of exactly
max_sequence_length tokens with no padding (engine.text.packing)."""
import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from engine.errors import CorpusError
from engine.text.packing import SequenceSource

DOCUMENTS = [
    "The cat sat on the mat.\nIt watched the rain all day.",
    "Sparse autoencoders find features.",
    "In 1969 astronauts landed on the Moon.\n\nThey came back safely.",
    "A short one.",
] * 6


@pytest.fixture(scope="module")
def tokenizer(tiny_gpt2_dir):
    return AutoTokenizer.from_pretrained(tiny_gpt2_dir)


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCUMENTS), encoding="utf-8")
    return path


def source(path, tokenizer, **overrides):
    values = dict(max_sequence_length=16, causal=True, prepend_bos=True, exclude_special_tokens=True)
    values.update(overrides)
    return SequenceSource(path, tokenizer, **values)


def test_concat_windows_hold_exactly_max_sequence_length_tokens_with_no_padding(jsonl, tokenizer):
    sequences = source(jsonl, tokenizer, packing="concat").read()
    assert sequences.ids and all(len(ids) == 16 for ids in sequences.ids)
    assert all(ids[0] == tokenizer.bos_token_id for ids in sequences.ids)
    # The windows are the documents' tokens, each document followed by the EOS, in order, cut every
    # 15 tokens (the 16th is the BOS in front); the shorter last window is dropped.
    flat = [t for d in DOCUMENTS for t in [*tokenizer(d, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]]
    n = len(flat) // 15
    assert len(sequences.ids) == n
    assert [t for ids in sequences.ids for t in ids[1:]] == flat[: n * 15]


def test_concat_rows_leave_out_the_bos_and_the_eos_between_documents(jsonl, tokenizer):
    sequences = source(jsonl, tokenizer, packing="concat").read()
    for ids, keep in zip(sequences.ids, sequences.keep):
        assert not keep[0]
        assert all(kept == (t != tokenizer.eos_token_id) for t, kept in zip(ids, keep))


def test_concat_without_a_bos_fills_the_whole_window_with_text(jsonl, tokenizer):
    sequences = source(jsonl, tokenizer, packing="concat", prepend_bos=False).read()
    flat = [t for d in DOCUMENTS for t in [*tokenizer(d, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]]
    assert [t for ids in sequences.ids for t in ids] == flat[: len(sequences.ids) * 16]


def test_documents_packing_makes_one_sequence_per_document_cut_at_the_length(jsonl, tokenizer):
    sequences = source(jsonl, tokenizer, packing="documents", max_sequence_length=8).read()
    assert len(sequences.ids) == len(DOCUMENTS)
    assert max(len(ids) for ids in sequences.ids) == 8
    assert sequences.ids[3] == [tokenizer.bos_token_id, *tokenizer("A short one.", add_special_tokens=False)["input_ids"]]


def test_lines_packing_makes_a_sequence_of_every_non_empty_line(jsonl, tokenizer):
    sequences = source(jsonl, tokenizer, packing="lines").read()
    lines = [line for d in DOCUMENTS for line in d.splitlines() if line.strip()]
    assert len(sequences.ids) == len(lines)
    assert sequences.ids[1][1:] == tokenizer("It watched the rain all day.", add_special_tokens=False)["input_ids"]


def test_a_txt_corpus_packs_by_lines_and_a_dataset_by_concat(tmp_path, jsonl, tokenizer):
    txt = tmp_path / "c.txt"
    txt.write_text("one line\nanother line\n")
    assert source(txt, tokenizer).packing == "lines"
    assert source(jsonl, tokenizer).packing == "concat"


def test_rows_per_sequence_counts_the_rows_the_sequences_hold(jsonl, tokenizer):
    packed = source(jsonl, tokenizer, packing="concat")
    rows = packed.rows_per_sequence()
    assert np.array_equal(rows, packed.read().rows)


def test_reading_a_number_of_rows_stops_at_the_sequence_that_reaches_it(jsonl, tokenizer):
    packed = source(jsonl, tokenizer, packing="lines")
    all_rows = packed.read().rows
    part = packed.read(int(all_rows[:5].sum()) - 1)
    assert len(part.ids) == 5


def test_a_corpus_too_short_for_one_window_says_what_to_change(tmp_path, tokenizer):
    path = tmp_path / "short.jsonl"
    path.write_text(json.dumps({"text": "Too short."}) + "\n")
    with pytest.raises(CorpusError, match="no full window of 64 tokens.*lower max_sequence_length"):
        source(path, tokenizer, packing="concat", max_sequence_length=64).rows_per_sequence()


def test_an_unknown_packing_is_refused_with_the_valid_ones(jsonl, tokenizer):
    with pytest.raises(CorpusError, match="lines, documents, concat"):
        source(jsonl, tokenizer, packing="paragraphs")
