"""A streamed run writes a checkpoint at a block's start whenever checkpoint_interval_s has passed
(engine.trainer.streamed): a one-pass run that dies mid-pass, with no chance to write one,
resumes from the latest of them. It keeps that one only, and a resume from it reads the corpus
from its block on and trains on the same tokens as an uninterrupted run."""
import pytest
import torch

from engine.text.corpus import read_documents
from engine.disk import CHECKPOINTS_ON_DISK, seek_record_bytes
from engine.trainer import checkpoint
from engine.trainer import train_sae
from tests.engine.text.test_packing_positions import CountingTokenizer
from tests.engine.trainer.test_streamed_resume_seeks import config, documents, gpt2, small_chunks, stream_of, write  # noqa: F401


class Died(Exception):
    """The process dying mid-pass: nothing after it runs (no cancel, no checkpoint)."""


def checkpoint_files(folder):
    return sorted(p.name for p in folder.glob("sae_checkpoint_*"))


def test_a_streamed_run_that_dies_mid_pass_resumes_from_its_latest_interval_checkpoint(tmp_path, gpt2, sample_texts):
    corpus = write(tmp_path / "docs.jsonl", documents(sample_texts))
    tokenizer = CountingTokenizer(gpt2.tokenizer)
    whole = train_sae(stream_of(corpus, tokenizer, gpt2, "concat"), config())
    total_steps = -(-whole.tokens_trained // whole.sae_batch_tokens)
    on_disk, written = [], []

    def on_checkpoint(info):
        written.append(info)
        on_disk.append(checkpoint_files(tmp_path / "run"))

    def on_progress(p):
        if p.step >= total_steps * 3 // 4:
            raise Died

    with pytest.raises(Died):
        train_sae(stream_of(corpus, tokenizer, gpt2, "concat"), config(checkpoint_interval_s=0.0),
                       checkpoint_dir=tmp_path / "run", on_progress=on_progress, on_checkpoint=on_checkpoint)
    # One at each block's start after the first; each replaces the one before, which is gone by the next.
    assert len(written) >= 3 and all(info.path.name.startswith("sae_checkpoint_0_step_") for info in written)
    assert [info.replaced for info in written[1:]] == [info.path for info in written[:-1]]
    assert max(len(files) for files in on_disk) <= CHECKPOINTS_ON_DISK
    assert checkpoint_files(tmp_path / "run") == [written[-1].path.name]

    latest = checkpoint.load(written[-1].path).payload
    assert latest["step"] > 0 and latest["epoch"] == 0
    # What the disk plan counts for it besides the SAE: the rows of each of the pass's sequences.
    record = latest["stream_seek"]["rows_per_sequence"]
    assert record.numel() * record.element_size() == seek_record_bytes(stream_of(corpus, tokenizer, gpt2, "concat").n_sequences)
    position = latest["stream_seek"]["position"]
    before = sum(1 for _, cursor in read_documents(corpus) if cursor < tuple(position["cursor"]))
    assert before >= len(documents(sample_texts)) // 2

    stream = stream_of(corpus, tokenizer, gpt2, "concat")  # counts the rows: a pass of its own
    tokenizer.texts = 0
    progress = []
    resumed = train_sae(stream, config(checkpoint_interval_s=0.0),
                             checkpoint_dir=tmp_path / "run", resume_from=written[-1].path, on_progress=progress.append)
    assert 0 < tokenizer.texts <= len(documents(sample_texts)) - before
    # Progress goes on from the checkpoint's tokens, not from 0.
    assert progress[0].step == latest["step"] + 1
    assert progress[0].tokens_done == latest["tokens_trained"] + whole.sae_batch_tokens
    assert resumed.tokens_trained == whole.tokens_trained
    assert resumed.loss_history == pytest.approx(whole.loss_history, rel=1e-6)
    for key, value in whole.sae.state_dict().items():
        torch.testing.assert_close(resumed.sae.state_dict()[key], value, rtol=0, atol=1e-6)
    # The resumed run's own checkpoints replaced the one it started from: the epoch's end is left.
    assert checkpoint_files(tmp_path / "run") == ["sae_checkpoint_1.pt"]


def test_no_checkpoint_is_written_inside_an_epoch_before_the_interval_passes(tmp_path, gpt2, sample_texts):
    corpus = write(tmp_path / "docs.jsonl", documents(sample_texts))
    result = train_sae(stream_of(corpus, gpt2.tokenizer, gpt2, "concat"), config(checkpoint_interval_s=1e9),
                            checkpoint_dir=tmp_path / "run")
    assert [info.path.name for info in result.checkpoints] == ["sae_checkpoint_1.pt"]
