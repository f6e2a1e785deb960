"""Extraction to a cache reads its corpus a group of sequences at a time (engine.activations.extract): the
token ids it holds at once are bounded by the group and the corpus reader's chunk, however long
the corpus, and the file it writes is the one the sequences held in memory give."""
import json
from dataclasses import dataclass

import numpy as np
import pytest

from engine.text import packing
from engine.activations.extract import GROUP_BATCHES, ExtractionStream, extract_activations, extract_sites
from engine.activations.cache import arrival_path, load_arrival, token_index_paths
from engine.models.loading import load_model
from engine.text.packing import SequenceSource
from engine.models.resolve import resolve_model
from engine.run import RunPaths, RunSpec, run, sources
from engine.text.sequences import Sequences
from engine.trainer import TrainConfig

BATCH = 4
CHUNK_DOCUMENTS = 16
MAX_LEN = 16


class Alive:
    """How many sequences' token ids exist at once: every list a counted source gives is one."""

    now = peak = made = 0


class TrackedIds(list):
    def __init__(self, ids):
        super().__init__(ids)
        Alive.now += 1
        Alive.made += 1
        Alive.peak = max(Alive.peak, Alive.now)

    def __del__(self):
        Alive.now -= 1


@dataclass
class CountedSource(SequenceSource):
    """A SequenceSource whose sequences count themselves while they live."""

    def chunks(self, start=None):
        for chunk in super().chunks(start):
            yield Sequences(ids=[TrackedIds(ids) for ids in chunk.ids], keep=chunk.keep, prepend_bos=chunk.prepend_bos)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(packing, "_CHUNK_DOCUMENTS", CHUNK_DOCUMENTS)
    Alive.now = Alive.peak = Alive.made = 0


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir):
    return load_model(resolve_model(str(tiny_gpt2_dir), models_dir=None), device="cpu")


@pytest.fixture
def corpus(tmp_path, sample_texts):
    """Short documents, one concat window or so each: many sequences, each chunk a few of them."""
    path = tmp_path / "docs.jsonl"
    documents = sample_texts * 20
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    return path


def counted(corpus, loaded, cls=CountedSource):
    return cls(corpus, loaded.tokenizer, max_sequence_length=MAX_LEN, causal=True, prepend_bos=True,
               exclude_special_tokens=True, packing="concat")


def bound(source) -> int:
    """A group, and the chunk a reader holds beside the one it reads next."""
    largest_chunk = max(len(chunk.ids) for chunk in SequenceSource.chunks(source))
    return BATCH * GROUP_BATCHES + 2 * largest_chunk


def options(path, **overrides):
    values = dict(layer_number=1, batch_size=BATCH, max_sequence_length=MAX_LEN, out_path=path, seed=3)
    values.update(overrides)
    return values


@pytest.mark.slow
def test_extraction_from_a_source_holds_a_group_and_a_chunk_never_the_corpus(gpt2, corpus, tmp_path):
    source = counted(corpus, gpt2)
    n_sequences = len(source.rows_per_sequence())
    assert n_sequences > 4 * bound(source)  # the corpus is many times what may be held
    Alive.peak = 0
    extract_activations(gpt2, source, **options(tmp_path / "a.npy"))
    assert 0 < Alive.peak <= bound(source) < n_sequences


@pytest.mark.slow
def test_a_stream_and_several_sites_hold_no_more_than_a_group_and_a_chunk(gpt2, corpus, tmp_path):
    source = counted(corpus, gpt2)
    lengths = source.lengths()
    Alive.peak = 0
    stream = ExtractionStream(gpt2, source, lengths=lengths, **options(tmp_path / "s.npy"))
    stream.result()
    extract_sites(gpt2, source, lengths=lengths, sites={(1, "mlp_in"): tmp_path / "in.npy", (1, "mlp_out"): tmp_path / "out.npy"},
                  batch_size=BATCH, max_sequence_length=MAX_LEN)
    assert 0 < Alive.peak <= bound(source) < len(lengths[0])


def test_a_file_read_from_the_source_is_the_one_its_sequences_in_memory_give(gpt2, corpus, tmp_path):
    source = counted(corpus, gpt2, SequenceSource)
    from_source = extract_activations(gpt2, source, **options(tmp_path / "a.npy", n_rows=1000))
    in_memory = extract_activations(gpt2, source.read(1000), **options(tmp_path / "b.npy"))
    assert from_source.n_tokens == in_memory.n_tokens >= 1000
    assert from_source.n_sequences == in_memory.n_sequences < len(source.rows_per_sequence())
    assert np.array_equal(np.load(from_source.path), np.load(in_memory.path))
    for a, b in zip((*token_index_paths(from_source.path), arrival_path(from_source.path)),
                    (*token_index_paths(in_memory.path), arrival_path(in_memory.path))):
        assert np.array_equal(np.load(a), np.load(b))
    tokens = np.load(from_source.tokens_path)
    sequences = source.read(1000)
    expected = [t for ids, keep in zip(sequences.ids, sequences.keep) for t, kept in zip(ids, keep) if kept]
    assert tokens.tolist() == expected  # row r is the corpus's r-th row token


@pytest.mark.slow
def test_batches_run_a_group_at_a_time_in_corpus_order_and_in_a_seeded_order_inside_it(gpt2, corpus, tmp_path):
    source = counted(corpus, gpt2, SequenceSource)
    lengths = source.lengths()
    first = load_arrival(extract_activations(gpt2, source, lengths=lengths, **options(tmp_path / "a.npy")).path,
                         int(lengths[0].sum())).rows()
    again = load_arrival(extract_activations(gpt2, source, lengths=lengths, **options(tmp_path / "b.npy")).path,
                         int(lengths[0].sum())).rows()
    other = extract_activations(gpt2, source, lengths=lengths, **options(tmp_path / "c.npy", seed=4)).path
    assert np.array_equal(first, again) and not np.array_equal(first, load_arrival(other, len(first)).rows())
    group_rows = int(lengths[0][: BATCH * GROUP_BATCHES].sum())
    assert sorted(first[:group_rows].tolist()) == list(range(group_rows))  # the first group's rows come first


@pytest.mark.slow
def test_a_run_that_caches_holds_a_group_and_a_chunk_until_its_evaluation_and_never_the_corpus(gpt2, corpus, tmp_path,
                                                                                                 tiny_gpt2_dir,
                                                                                                 monkeypatch):
    monkeypatch.setattr(sources, "SequenceSource", CountedSource)
    held = {}

    def on_phase(phase, **_):
        if phase == "evaluating":  # the evaluation then reads the held-out sequences it measures (capped)
            held["peak"] = Alive.peak

    from engine.run import RunCallbacks

    config = TrainConfig(min_steps=0, cpu_bf16="off", architecture="topk", k=4, hidden_dim=32, sae_batch_tokens=64, max_epochs=1, min_loss=0.0,
                         checkpoint_every_epochs=0, checkpoint_interval_s=1e9, shuffle_buffer_tokens=128,
                         decode_path="dense")
    for overlapped in (False, True):
        Alive.peak = 0
        spec = RunSpec(cpu_bf16="off", paths=RunPaths.in_folder(tmp_path / f"out{overlapped}"), model=str(tiny_gpt2_dir), corpus=corpus,
                       layer_number=1, max_sequence_length=MAX_LEN, batch_size=BATCH, packing="concat",
                       cache_activations="always", first_epoch_in_arrival_order=overlapped, config=config)
        outcome = run(spec, RunCallbacks(on_phase=on_phase))
        assert outcome.status == "completed" and outcome.extraction.overlapped is overlapped
        source = counted(corpus, gpt2)
        n_sequences = len(source.rows_per_sequence())
        assert 0 < held["peak"] <= bound(source) < n_sequences
        assert Alive.peak < n_sequences / 4


def test_a_cache_holds_the_very_rows_a_stream_computes(gpt2, corpus, tmp_path):
    """Both run the same groups of the same batches, so a streamed run and a cached one train on the
    same values, not values equal up to float16 rounding."""
    from engine.activations.stream import ActivationStream

    source = counted(corpus, gpt2, SequenceSource)
    lengths = source.lengths()
    cached = extract_activations(gpt2, source, lengths=lengths, **options(tmp_path / "a.npy", n_rows=600))
    stream = ActivationStream(gpt2, source, lengths[0], layer_number=1, batch_size=BATCH, n_rows=600)
    assert np.array_equal(stream.read(0, stream.n_rows), np.load(cached.path))
