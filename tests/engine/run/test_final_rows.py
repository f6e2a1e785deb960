"""After training a run reads the pass's last rows once: the evaluation measures the last held-out
ones, the feature analysis the last ones of the pass, each up to its cap, and a streamed run
computes them with the model once, not once for each."""
import json

import numpy as np
import pytest

from engine.activations import stream as stream_module
from engine.activations.cache import load_token_index
from engine.evaluation.features import load_analysis
from engine.run import EvaluationSettings, FeatureSettings, RunCallbacks, RunPaths, RunSpec, run
from engine.trainer import TrainConfig
from tests.engine.run.test_run_streaming import config as streaming_config
from tests.engine.run.test_run_streaming import corpus  # noqa: F401 (fixture)


def config(**overrides) -> TrainConfig:
    return streaming_config(**{"eval_fraction": 0.25, **overrides})


def spec(folder, model_dir, corpus, *, eval_rows, analysis_rows, cache):
    return RunSpec(cpu_bf16="off", paths=RunPaths.in_folder(folder), model=str(model_dir), corpus=corpus, layer_number=1,
                   max_sequence_length=16, batch_size=8, config=config(), cache_activations=cache,
                   evaluation=EvaluationSettings(max_rows=eval_rows, ce_max_tokens=40),
                   features=FeatureSettings(max_tokens=analysis_rows))


@pytest.fixture
def forwards(monkeypatch):
    """Rows the stream computes with the model, by the run's phase."""
    counted = {"phase": None, "rows": {}}
    original = stream_module.ActivationStream._forward

    def counting(self, group, first_sequence, should_stop):
        rows, tokens = original(self, group, first_sequence, should_stop)
        counted["rows"][counted["phase"]] = counted["rows"].get(counted["phase"], 0) + len(rows)
        return rows, tokens

    monkeypatch.setattr(stream_module.ActivationStream, "_forward", counting)
    return counted


def numbered_documents(path, sample_texts, n):
    path.write_text("".join(json.dumps({"text": f"{i}: {sample_texts[i % len(sample_texts)]}"}) + "\n" for i in range(n)))
    return path


@pytest.mark.slow
def test_a_streamed_run_computes_the_rows_it_reads_after_training_once(tmp_path, tiny_gpt2_dir, corpus, forwards):
    callbacks = RunCallbacks(on_phase=lambda phase, **_: forwards.update(phase=phase))
    outcome = run(spec(tmp_path / "out", tiny_gpt2_dir, corpus, eval_rows=50, analysis_rows=120, cache="never"),
                  callbacks)
    n_rows = outcome.training_stats["tokens"]
    heldout = n_rows - outcome.result.heldout_rows[0]
    assert heldout > 50 and n_rows > 120  # so both caps bite
    evaluation, features = outcome.evaluation, outcome.features
    assert evaluation["eval_tokens"] == 50 and f"the last 50 of {heldout:,}" in evaluation["eval_tokens_reason"]
    assert features["analyzed_tokens"] == 120 and f"the last 120 of the run's {n_rows:,}" in features["analyzed_tokens_reason"]
    # Training kept the rows it computed of those 120; after it the model computes only the held-out
    # rows its last group did not reach, and no row twice but the first block's group (read for the
    # input scale, then again by the blocks; groups of 8 x 8 sequences of up to 16 tokens).
    assert 0 < forwards["rows"]["evaluating"] <= heldout
    assert "analyzing" not in forwards["rows"]
    assert sum(forwards["rows"].values()) <= n_rows + 64 * 16
    assert 0 < evaluation["ce_eval_tokens"] <= 40 + 16


@pytest.mark.slow
def test_a_cached_runs_analysis_reads_the_last_rows_and_shows_their_contexts(tmp_path, tiny_gpt2_dir, corpus):
    outcome = run(spec(tmp_path / "out", tiny_gpt2_dir, corpus, eval_rows=None, analysis_rows=120, cache="always"))
    n_rows = outcome.training_stats["tokens"]
    assert outcome.evaluation["eval_tokens"] == n_rows - outcome.result.heldout_rows[0]
    assert "eval_tokens_reason" not in outcome.evaluation
    analysis = load_analysis(outcome.paths.features_dir)
    assert analysis.n_rows == 120
    fired = analysis.top_rows >= 0
    # Row numbers are the run's: each top row's peak token is the cache's token at that row.
    assert (analysis.top_rows[fired] >= n_rows - 120).all() and (analysis.top_rows[fired] < n_rows).all()
    token_ids, _ = load_token_index(outcome.activations_path)
    peaks = analysis.window_tokens[:, :, analysis.window][fired]
    assert np.array_equal(peaks, np.asarray(token_ids)[analysis.top_rows[fired]])


@pytest.mark.slow
def test_the_same_rows_give_the_same_evaluation_streamed_or_cached(tmp_path, tiny_gpt2_dir, corpus):
    streamed = run(spec(tmp_path / "s", tiny_gpt2_dir, corpus, eval_rows=50, analysis_rows=120, cache="never"))
    cached = run(spec(tmp_path / "c", tiny_gpt2_dir, corpus, eval_rows=50, analysis_rows=120, cache="always"))
    for name in ("eval_tokens", "ce_eval_tokens"):
        assert streamed.evaluation[name] == cached.evaluation[name]
    assert streamed.features["analyzed_tokens"] == cached.features["analyzed_tokens"] == 120


@pytest.mark.slow
def test_after_training_a_streamed_run_reads_the_corpus_from_near_its_suffix_not_from_its_start(
        tmp_path, tiny_gpt2_dir, sample_texts, tokenized):
    corpus = numbered_documents(tmp_path / "docs.jsonl", sample_texts, 160)
    when = {}
    options = spec(tmp_path / "out", tiny_gpt2_dir, corpus, eval_rows=30, analysis_rows=40, cache="never")
    options.batch_size = 1
    outcome = run(options, RunCallbacks(on_phase=lambda phase, **_: when.setdefault(phase, tokenized())))
    after_training = tokenized() - when["evaluating"]
    # The rows, then the held-out sequences: each from the chunk of the group before them, a few
    # chunks of 8 documents, where reading from the start would tokenize all 160 twice.
    assert outcome.status == "completed" and 0 < after_training <= 4 * 8 * 2


@pytest.mark.slow
def test_a_budgeted_run_never_tokenizes_the_corpus_past_what_it_reads(tmp_path, tiny_gpt2_dir, sample_texts, tokenized):
    corpus = numbered_documents(tmp_path / "docs.jsonl", sample_texts, 400)
    options = spec(tmp_path / "out", tiny_gpt2_dir, corpus, eval_rows=30, analysis_rows=40, cache="never")
    options.training_tokens = 300  # about 30 documents of 400
    when = {}
    outcome = run(options, RunCallbacks(on_phase=lambda phase, **_: when.setdefault(phase, tokenized())))
    assert outcome.status == "completed" and outcome.result.tokens_trained == 300
    # Counting the rows reads the documents the budget needs, a chunk of 8 past them at most; the
    # reads that follow start at the corpus's start or a group of 64 sequences (the whole budget here).
    assert when["training"] <= 40 + 8
    assert tokenized() <= 5 * (40 + 8) < 400


def test_the_rows_a_stream_keeps_are_the_rows_it_would_compute_again(tmp_path, tiny_gpt2_dir, corpus):
    from engine.models.loading import load_model
    from engine.text.packing import SequenceSource
    from engine.models.resolve import resolve_model
    from engine.activations.stream import ActivationStream

    loaded = load_model(resolve_model(str(tiny_gpt2_dir), models_dir=None), device="cpu")
    source = SequenceSource(corpus, loaded.tokenizer, max_sequence_length=16, causal=True, prepend_bos=True,
                            exclude_special_tokens=True)
    stream = ActivationStream(loaded, source, source.rows_per_sequence(), layer_number=1, batch_size=2)
    n = stream.n_rows
    stream.keep_from(n - 150)
    stream.reader(0, n - 100).read(0, n - 100)  # training's reads: the kept rows they reach are kept
    rows, tokens = stream.kept_rows()
    fresh = ActivationStream(loaded, source, source.rows_per_sequence(), layer_number=1, batch_size=2)
    expected, expected_tokens = fresh.reader(n - 150, n).read_with_tokens(n - 150, n)
    assert np.array_equal(rows, expected) and np.array_equal(tokens, expected_tokens)
