"""A pass over a corpus with no cache (engine.activations.stream, engine.trainer.streamed): the rows it computes
are the cache's, a streamed first epoch trains like a cached one, and a resumed streamed run takes
the same batches as an uninterrupted one."""
import json

import numpy as np
import pytest
import torch

from engine.activations.extract import extract_activations
from engine.models.loading import load_model
from engine.text.packing import SequenceSource
from engine.models.resolve import resolve_model
from engine.activations.stream import ActivationStream
from engine.trainer import TrainConfig, train_sae
from engine.trainer import train_sae

# float16 rows computed in batches of other shapes: the model's float32 values differ in the last
# bits, which rounding to float16 may or may not hide (one float16 step at |x| < 2).
ROW_TOLERANCE = 2e-3
# A streamed epoch draws batches from blocks of the buffer, a cached one from the whole pass: the
# two SAEs differ, but must reconstruct about as well (relative difference of the final MSE).
EPOCH_MSE_TOLERANCE = 0.05


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir):
    return load_model(resolve_model(str(tiny_gpt2_dir), models_dir=None), device="cpu")


@pytest.fixture
def corpus(tmp_path, sample_texts):
    path = tmp_path / "docs.jsonl"
    documents = [" ".join(sample_texts[i : i + 3]) for i in range(0, len(sample_texts), 3)] * 4
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    return path


def source(corpus, loaded, **overrides):
    values = dict(max_sequence_length=16, causal=True, prepend_bos=True, exclude_special_tokens=True, packing="concat")
    values.update(overrides)
    return SequenceSource(corpus, loaded.tokenizer, **values)


def stream_of(corpus, loaded, n_rows=None, **overrides):
    packed = source(corpus, loaded, **overrides)
    return ActivationStream(loaded, packed, packed.rows_per_sequence(), layer_number=1, batch_size=4, n_rows=n_rows)


def config(**overrides):
    values = dict(min_steps=0, cpu_bf16="off", architecture="topk", k=4, hidden_dim=64, learning_rate=1e-3, sae_batch_tokens=64, max_epochs=1,
                  min_loss=0.0, checkpoint_every_epochs=1, checkpoint_interval_s=1e9, progress_interval_s=0.0,
                  stop_check_interval_s=0.0, shuffle_buffer_tokens=256, decode_path="dense")
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.slow
def test_a_streamed_pass_computes_the_rows_a_cache_holds(corpus, gpt2, tmp_path):
    stream = stream_of(corpus, gpt2)
    cached = extract_activations(gpt2, source(corpus, gpt2).read(), layer_number=1, batch_size=4,
                                 max_sequence_length=16, out_path=tmp_path / "a.npy")
    rows = np.load(cached.path)
    assert stream.shape == rows.shape
    assert np.abs(stream.read(0, stream.n_rows).astype(np.float32) - rows).max() <= ROW_TOLERANCE


def test_a_read_from_the_middle_of_the_pass_computes_the_same_rows(corpus, gpt2):
    stream = stream_of(corpus, gpt2, packing="lines")
    whole = stream.read(0, stream.n_rows)
    middle = stream.n_rows // 2 + 3
    assert np.array_equal(stream.read(middle, stream.n_rows), whole[middle:])


def test_a_budget_within_the_pass_reads_only_the_sequences_it_needs(corpus, gpt2):
    full = stream_of(corpus, gpt2)
    part = stream_of(corpus, gpt2, n_rows=40)
    assert 40 <= part.n_rows < 40 + 16 and part.n_rows < full.n_rows


def test_a_streamed_first_epoch_trains_like_the_cached_one(corpus, gpt2):
    stream = stream_of(corpus, gpt2)
    rows = stream.read(0, stream.n_rows)
    streamed = train_sae(stream, config())
    cached = train_sae(rows, config())
    assert streamed.tokens_trained == cached.tokens_trained == streamed.heldout_rows[0]
    assert streamed.heldout_rows == cached.heldout_rows
    assert abs(streamed.final_mse - cached.final_mse) <= EPOCH_MSE_TOLERANCE * cached.final_mse


def test_a_streamed_run_stopped_and_resumed_trains_on_the_same_tokens(corpus, gpt2, tmp_path):
    whole = train_sae(stream_of(corpus, gpt2), config(max_epochs=2))
    steps = []

    def stop():  # after the 5th step: inside the first epoch's second block
        return len(steps) >= 5

    first = train_sae(stream_of(corpus, gpt2), config(max_epochs=2), checkpoint_dir=tmp_path,
                           on_progress=lambda p: steps.append(p.step), should_stop=stop)
    assert first.stopped_reason == "cancelled"
    checkpoint = first.checkpoints[-1].path
    assert checkpoint.name.endswith("_step_5.pt")
    resumed = train_sae(stream_of(corpus, gpt2), config(max_epochs=2), resume_from=checkpoint)
    assert resumed.tokens_trained == whole.tokens_trained
    for name, value in whole.sae.state_dict().items():
        torch.testing.assert_close(resumed.sae.state_dict()[name], value, rtol=0, atol=1e-6)


def test_a_cached_run_cannot_resume_from_a_streamed_checkpoint(corpus, gpt2, tmp_path):
    stream = stream_of(corpus, gpt2)
    result = train_sae(stream, config(), checkpoint_dir=tmp_path)
    with pytest.raises(Exception, match="streamed from the model"):
        train_sae(stream.read(0, stream.n_rows), config(max_epochs=2), resume_from=result.checkpoints[-1].path)
