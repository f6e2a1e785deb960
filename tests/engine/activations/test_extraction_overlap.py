"""Training while the model extracts (engine.activations.extract.ExtractionStream): the first epoch steps
on rows as they arrive, and the run is the same run as one that waits for the finished file."""
import threading
import time

import numpy as np
import pytest
import torch

from engine.activations.extract import ExtractionStream, extract_activations
from engine.activations.cache import load_arrival
from engine.errors import ActivationsError, EngineError, ExtractionCancelled
from engine.models.loading import load_model
from engine.models.resolve import resolve_model
from engine.trainer import TrainConfig, train_sae

LAYER = 1


def config(**overrides) -> TrainConfig:
    values = dict(min_steps=0, cpu_bf16="off", architecture="topk", k=8, hidden_dim=128, learning_rate=1e-3, sae_batch_tokens=64, max_epochs=2,
                  min_loss=0.0, checkpoint_every_epochs=0, checkpoint_interval_s=1e9, progress_interval_s=0.0,
                  shuffle_buffer_tokens=256, eval_fraction=0.05, decode_path="dense")
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture
def gpt2(tiny_gpt2_dir):
    return load_model(resolve_model(str(tiny_gpt2_dir), models_dir=None), device="cpu")


def texts(sample_texts):
    return sample_texts * 4


def extract(loaded, texts, path, **kwargs):
    return dict(layer_number=LAYER, batch_size=4, max_sequence_length=24, out_path=path, **kwargs)


class SlowModel:
    """The loaded model with every forward slowed down, so the trainer really runs ahead of it."""

    def __init__(self, loaded, delay_s):
        self.loaded, self.delay_s = loaded, delay_s
        self.forwards = 0

    def install(self):
        model, original = self.loaded.model, self.loaded.model.forward

        def slow(*args, **kwargs):
            self.forwards += 1
            time.sleep(self.delay_s)
            return original(*args, **kwargs)

        model.forward = slow


def test_the_arrival_order_lists_every_row_once_and_is_kept_beside_the_file(gpt2, sample_texts, tmp_path):
    result = extract_activations(gpt2, texts(sample_texts), **extract(gpt2, None, tmp_path / "a.npy"))
    arrival = load_arrival(result.path, result.n_tokens).rows()
    assert sorted(arrival.tolist()) == list(range(result.n_tokens))
    assert not np.array_equal(arrival, np.arange(result.n_tokens))  # batches run by length, not corpus order


@pytest.mark.slow
def test_an_overlapped_run_is_the_run_a_finished_file_gives(gpt2, sample_texts, tmp_path):
    """Same weights bit for bit, whether the first epoch waited on a live extraction or read the
    finished file in the saved arrival order; and the trainer did step before extraction ended."""
    slow = SlowModel(gpt2, 0.05)
    slow.install()
    steps_before_end = []

    stream = ExtractionStream(gpt2, texts(sample_texts), **extract(gpt2, None, tmp_path / "live.npy"))

    def on_progress(p):
        if stream._result is None:
            steps_before_end.append(p.step)

    overlapped = train_sae(stream, config(), on_progress=on_progress)
    extraction = stream.result()
    assert steps_before_end, "no step ran while extraction was still going"
    assert extraction.path.is_file() and not list(extraction.path.parent.glob("live.npy.partial*"))

    finished = np.load(extraction.path, mmap_mode="r")
    again = train_sae(finished, config(), first_epoch_rows=load_arrival(extraction.path, len(finished)))
    assert again.loss_history == overlapped.loss_history
    for name, value in overlapped.sae.state_dict().items():
        assert torch.equal(value, again.sae.state_dict()[name]), name
    # Without the order, the first epoch is a plain shuffle: another run.
    plain = train_sae(finished, config())
    assert plain.loss_history != overlapped.loss_history


def test_a_run_resumed_mid_first_epoch_matches(gpt2, sample_texts, tmp_path):
    stream = ExtractionStream(gpt2, texts(sample_texts), **extract(gpt2, None, tmp_path / "acts.npy"))
    whole = train_sae(stream, config(max_epochs=1))
    path = stream.result().path
    finished = np.load(path, mmap_mode="r")
    arrival = load_arrival(path, len(finished)).rows()

    stops = iter([False, False, False, True])
    cut = train_sae(finished, config(max_epochs=1, stop_check_interval_s=0.0), first_epoch_rows=arrival,
                    should_stop=lambda: next(stops, True), checkpoint_dir=tmp_path / "ck")
    assert cut.stopped_reason == "cancelled"
    checkpoint = cut.checkpoints[-1].path
    resumed = train_sae(finished, config(max_epochs=1), first_epoch_rows=arrival, resume_from=checkpoint)
    for name, value in whole.sae.state_dict().items():
        assert torch.equal(value, resumed.sae.state_dict()[name]), name
    # A checkpoint of a mixed first epoch cannot silently continue as a plain shuffle.
    with pytest.raises(EngineError, match="extraction order"):
        train_sae(finished, config(max_epochs=1), resume_from=checkpoint)


def test_a_plain_run_resumed_with_an_order_at_hand_stays_plain(gpt2, sample_texts, tmp_path):
    """A run that extracted first and shuffled plainly (the CPU's way) resumes as it ran, even
    though the service hands every resume the file's arrival order."""
    path = extract_activations(gpt2, texts(sample_texts), **extract(gpt2, None, tmp_path / "p.npy")).path
    finished = np.load(path, mmap_mode="r")
    whole = train_sae(finished, config(max_epochs=1))
    stops = iter([False, False, False, True])
    cut = train_sae(finished, config(max_epochs=1, stop_check_interval_s=0.0), should_stop=lambda: next(stops, True),
                    checkpoint_dir=tmp_path / "ck")
    resumed = train_sae(finished, config(max_epochs=1), resume_from=cut.checkpoints[-1].path,
                        first_epoch_rows=load_arrival(path, len(finished)))
    for name, value in whole.sae.state_dict().items():
        assert torch.equal(value, resumed.sae.state_dict()[name]), name


def test_an_extraction_failure_reaches_the_trainer_and_leaves_no_file(gpt2, sample_texts, tmp_path):
    original = gpt2.model.forward
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise ActivationsError("the third batch broke")
        return original(*args, **kwargs)

    gpt2.model.forward = failing
    stream = ExtractionStream(gpt2, texts(sample_texts), **extract(gpt2, None, tmp_path / "b.npy"))
    with pytest.raises(ActivationsError, match="third batch"):
        train_sae(stream, config())
    stream.close()
    assert list(tmp_path.glob("b.npy*")) == []


@pytest.mark.slow
def test_a_cancel_while_waiting_for_rows_stops_training_and_extraction(gpt2, sample_texts, tmp_path):
    slow = SlowModel(gpt2, 0.2)
    slow.install()
    cancel = threading.Event()
    stream = ExtractionStream(gpt2, texts(sample_texts), **extract(gpt2, None, tmp_path / "c.npy"))
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(ExtractionCancelled):
        # The buffer's first fill needs most of the corpus: the cancel comes while waiting for it.
        train_sae(stream, config(shuffle_buffer_tokens=100_000, stop_check_interval_s=0.05), should_stop=cancel.is_set)
    assert time.monotonic() - started < 3
    stream.close()
    assert slow.forwards < stream._schedule.n_batches
    assert list(tmp_path.glob("c.npy*")) == []


def test_a_buffer_smaller_than_a_batch_and_one_larger_than_the_rows_both_work(gpt2, sample_texts, tmp_path):
    for buffer in (2, 10**6):
        stream = ExtractionStream(gpt2, texts(sample_texts), **extract(gpt2, None, tmp_path / f"d{buffer}.npy"))
        result = train_sae(stream, config(max_epochs=1, shuffle_buffer_tokens=buffer))
        assert stream.result().path.is_file()
        assert result.total_epochs == 1 and np.isfinite(result.final_loss)


def test_on_done_comes_once_in_the_consumers_thread_with_the_finished_file(gpt2, sample_texts, tmp_path):
    seen = []
    stream = ExtractionStream(gpt2, texts(sample_texts), **extract(gpt2, None, tmp_path / "e.npy"),
                              on_done=lambda result: seen.append((threading.current_thread(), result.path.is_file())))
    train_sae(stream, config(max_epochs=2))  # the second epoch needs the finished file
    assert seen == [(threading.main_thread(), True)]
    stream.result()
    assert len(seen) == 1
