"""A streamed run stopped mid-pass resumes where it was reading: its checkpoint holds the place in
the corpus of the block it was on (engine.activations.stream, engine.trainer.streamed), the resume tokenizes
none of the documents before it, and trains on the same tokens as an uninterrupted run."""
import json

import numpy as np
import pytest
import torch

from engine.text.corpus import read_documents
from engine.models.loading import load_model
from engine.text.packing import SequenceSource
from engine.models.resolve import resolve_model
from engine.activations.stream import ActivationStream
from engine.trainer import TrainConfig, checkpoint
from engine.trainer import train_sae
from tests.engine.text.test_corpus_formats import write_parquet
from tests.engine.text.test_packing_positions import CountingTokenizer

CHUNK = 8  # documents a chunk: the corpus is many chunks


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir):
    return load_model(resolve_model(str(tiny_gpt2_dir), models_dir=None), device="cpu")


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr("engine.text.packing._CHUNK_DOCUMENTS", CHUNK)


def documents(sample_texts) -> list[str]:
    return [f"{i}: {sample_texts[i % len(sample_texts)]}" for i in range(120)]


def write(path, texts):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    elif path.suffix == ".txt":
        path.write_text("\n".join(texts) + "\n")
    else:
        write_parquet(path, rows=[{"id": i, "body": t} for i, t in enumerate(texts)])
    return path


def stream_of(corpus, tokenizer, loaded, packing):
    packed = SequenceSource(corpus, tokenizer, max_sequence_length=16, causal=True, prepend_bos=True,
                            exclude_special_tokens=True, packing=packing,
                            text_field="body" if corpus.suffix == ".parquet" else "text")
    return ActivationStream(loaded, packed, packed.rows_per_sequence(), layer_number=1, batch_size=2)


def config(**overrides):
    values = dict(min_steps=0, cpu_bf16="off", architecture="topk", k=4, hidden_dim=64, learning_rate=1e-3, sae_batch_tokens=32, max_epochs=1,
                  min_loss=0.0, checkpoint_every_epochs=1, checkpoint_interval_s=1e9, progress_interval_s=0.0,
                  stop_check_interval_s=0.0, shuffle_buffer_tokens=64, decode_path="dense")
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.slow
@pytest.mark.parametrize("name,packing", [("docs.jsonl", "concat"), ("docs.txt", "lines"),
                                          ("docs.jsonl", "documents"), ("docs.parquet", "concat")])
def test_a_streamed_run_stopped_mid_pass_resumes_where_it_read_and_trains_on_the_same_tokens(
        tmp_path, gpt2, sample_texts, name, packing):
    corpus = write(tmp_path / name, documents(sample_texts))
    tokenizer = CountingTokenizer(gpt2.tokenizer)
    whole = train_sae(stream_of(corpus, tokenizer, gpt2, packing), config())
    total_steps = -(-whole.tokens_trained // whole.sae_batch_tokens)
    steps = []

    def stop():  # three quarters into the pass
        return len(steps) >= total_steps * 3 // 4

    first = train_sae(stream_of(corpus, tokenizer, gpt2, packing), config(), checkpoint_dir=tmp_path / "run",
                           on_progress=lambda p: steps.append(p.step), should_stop=stop)
    assert first.stopped_reason == "cancelled"
    saved = checkpoint.load(first.checkpoints[-1].path).payload
    position = saved["stream_seek"]["position"]
    # The block it was on starts well into the corpus: the documents before its chunk are many.
    before = sum(1 for _, cursor in read_documents(corpus, text_field="body" if name.endswith("parquet") else "text")
                 if cursor < tuple(position["cursor"]))
    assert position["sequence"] > 0 and before >= len(documents(sample_texts)) // 2

    stream = stream_of(corpus, tokenizer, gpt2, packing)
    tokenizer.texts = 0
    resumed = train_sae(stream, config(), resume_from=first.checkpoints[-1].path)
    # Each text from the block's chunk on, once: none of those before it.
    assert 0 < tokenizer.texts <= len(documents(sample_texts)) - before

    assert resumed.tokens_trained == whole.tokens_trained
    assert resumed.loss_history == pytest.approx(whole.loss_history, rel=1e-6)
    for key, value in whole.sae.state_dict().items():
        torch.testing.assert_close(resumed.sae.state_dict()[key], value, rtol=0, atol=1e-6)


def test_a_checkpoint_at_an_epochs_end_resumes_from_the_corpus_start(tmp_path, gpt2, sample_texts):
    corpus = write(tmp_path / "docs.jsonl", documents(sample_texts))
    tokenizer = CountingTokenizer(gpt2.tokenizer)
    whole = train_sae(stream_of(corpus, tokenizer, gpt2, "concat"), config(max_epochs=2))
    steps = []
    first = train_sae(stream_of(corpus, tokenizer, gpt2, "concat"), config(max_epochs=2), checkpoint_dir=tmp_path,
                           on_progress=lambda p: steps.append(p.epoch), should_stop=lambda: 2 in steps)
    at_epoch_end = first.checkpoints[0].path
    assert at_epoch_end.name == "sae_checkpoint_1.pt"
    assert checkpoint.load(at_epoch_end).payload["stream_seek"]["position"] is None
    resumed = train_sae(stream_of(corpus, tokenizer, gpt2, "concat"), config(max_epochs=2), resume_from=at_epoch_end)
    for key, value in whole.sae.state_dict().items():
        torch.testing.assert_close(resumed.sae.state_dict()[key], value, rtol=0, atol=1e-6)


def test_a_corpus_changed_since_the_checkpoint_is_read_from_its_start_and_checked(tmp_path, gpt2, sample_texts):
    corpus = write(tmp_path / "docs.jsonl", documents(sample_texts))
    tokenizer = CountingTokenizer(gpt2.tokenizer)
    steps = []
    first = train_sae(stream_of(corpus, tokenizer, gpt2, "concat"), config(), checkpoint_dir=tmp_path / "run",
                           on_progress=lambda p: steps.append(p.step), should_stop=lambda: len(steps) >= 20)
    record = checkpoint.load(first.checkpoints[-1].path).payload["stream_seek"]
    # Another document in front: every cursor now lands elsewhere, and the rows moved.
    write(corpus, ["A new first document, longer than the others by far, to move every window."] + documents(sample_texts))
    stream = stream_of(corpus, tokenizer, gpt2, "concat")
    assert record["position"] is not None and stream.position_from(record) is None
    resumed = train_sae(stream, config(), resume_from=first.checkpoints[-1].path)
    assert np.isfinite(resumed.final_mse)


@pytest.mark.slow
def test_a_whole_streamed_run_resumed_takes_no_tokenizing_pass_before_where_it_stopped(tmp_path, tiny_gpt2_dir,
                                                                                          sample_texts, tokenized):
    from engine.run import RunCallbacks, run
    from tests.engine.run.test_run_streaming import config as run_config
    from tests.engine.run.test_run_streaming import spec

    corpus = write(tmp_path / "docs.jsonl", documents(sample_texts))
    options = dict(cache_activations="never", batch_size=1, config=run_config(shuffle_buffer_tokens=64, sae_batch_tokens=32))
    whole = run(spec(tmp_path / "whole", tiny_gpt2_dir, corpus, **options))
    total_steps = -(-whole.result.tokens_trained // whole.result.sae_batch_tokens)
    steps = []
    first = run(spec(tmp_path / "run", tiny_gpt2_dir, corpus, **options),
                RunCallbacks(on_train_progress=steps.append, should_stop=lambda: len(steps) >= total_steps * 3 // 4))
    assert first.cancelled_in == "training"
    position = checkpoint.load(first.result.checkpoints[-1].path).payload["stream_seek"]["position"]
    before = sum(1 for _, cursor in read_documents(corpus) if cursor < tuple(position["cursor"]))
    assert before >= len(documents(sample_texts)) // 2

    tokenized_when = {}
    resumed = run(spec(tmp_path / "run", tiny_gpt2_dir, corpus, resume_from=first.result.checkpoints[-1].path, **options),
                  RunCallbacks(on_phase=lambda phase, **_: tokenized_when.setdefault(phase, tokenized())))
    # No pass over the corpus to count its rows, no reading before the block it stopped on: up to
    # the evaluation (which reads the held-out tail), each text from that block's chunk on, once.
    assert 0 < tokenized_when["evaluating"] <= len(documents(sample_texts)) - before
    assert resumed.status == "completed" and resumed.result.tokens_trained == whole.result.tokens_trained
    for key, value in whole.result.sae.state_dict().items():
        torch.testing.assert_close(resumed.result.sae.state_dict()[key], value, rtol=0, atol=1e-6)


def test_a_checkpoints_rows_stand_in_for_the_tokenizing_pass_only_where_they_hold(tmp_path, gpt2, sample_texts):
    from types import SimpleNamespace

    from engine.run.sources import rows_to_read, saved_rows

    corpus = write(tmp_path / "docs.jsonl", documents(sample_texts))
    tokenizer = CountingTokenizer(gpt2.tokenizer)
    packed = stream_of(corpus, tokenizer, gpt2, "concat").source
    every = packed.rows_per_sequence()
    spec = SimpleNamespace(resume_from=None, training_tokens=200, config=config())
    stream = ActivationStream(gpt2, packed, every, layer_number=1, batch_size=2, n_rows=rows_to_read(spec, int(every.sum())))
    assert stream.n_sequences < len(every)  # the budget reads the corpus's first sequences only
    steps = []
    first = train_sae(stream, config(), checkpoint_dir=tmp_path / "run", on_progress=steps.append,
                           should_stop=lambda: len(steps) >= 2)
    spec.resume_from = first.checkpoints[-1].path

    rows, corpus_rows = saved_rows(spec, packed)
    assert corpus_rows == int(every.sum()) and np.array_equal(rows, every[: stream.n_sequences])
    # A larger budget reads sequences the checkpoint's run never counted: they need the pass.
    assert saved_rows(SimpleNamespace(**{**vars(spec), "training_tokens": 10**6}), packed) is None
    write(corpus, documents(sample_texts)[1:])
    assert saved_rows(spec, packed) is None
