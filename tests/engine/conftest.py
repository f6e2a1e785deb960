"""The engine's tests run with no Django at all (`make test` runs them with `-p no:django`); the
engine takes paths and options as arguments."""
import pytest


@pytest.fixture
def tokenized(monkeypatch):
    """How many texts the tokenizer of the latest run's corpus (engine.run.sources.sequence_source)
    was given so far, as a function; the corpus read in chunks of 8 documents."""
    from engine.text.packing import SequenceSource
    from engine.run import sources
    from tests.engine.text.test_packing_positions import CountingTokenizer

    monkeypatch.setattr("engine.text.packing._CHUNK_DOCUMENTS", 8)
    counting = []

    def counted_source(spec, loaded):
        counting.append(CountingTokenizer(loaded.tokenizer))
        return SequenceSource(spec.corpus, counting[-1], max_sequence_length=spec.max_sequence_length, causal=True,
                              prepend_bos=spec.prepend_bos, exclude_special_tokens=spec.exclude_special_tokens,
                              packing=spec.packing, text_field=spec.text_field)

    monkeypatch.setattr(sources, "sequence_source", counted_source)
    return lambda: counting[-1].texts if counting else 0

