"""Whether a run caches its activations, and what it needs of the disk (engine.disk)."""
import pytest

from engine.disk import (CHECKPOINTS_ON_DISK, DiskFull, cache_bytes, checkpoint_bytes, estimate_sequences_per_pass, plan_disk,
                         rows_for_budget, seek_record_bytes)
from engine.defaults import eval_rows

GB = 10**9


def plan(**overrides):
    values = dict(cache_activations="auto", rows_per_pass=1_000_000, d_model=1024, d_sae=4096, max_epochs=3,
                  eval_fraction=0.05, training_tokens=None, free=100 * GB)
    values.update(overrides)
    return plan_disk(**values)


def test_a_cache_is_two_bytes_a_value_and_four_a_token_id():
    assert cache_bytes(1000, 512) == 1000 * (512 * 2 + 4) + 4096


def test_several_passes_cache_when_the_cache_fits():
    verdict = plan()
    assert verdict.cache and verdict.passes == 3 and verdict.cache_bytes == cache_bytes(1_000_000, 1024)


def test_one_pass_streams_whatever_the_disk():
    assert not plan(max_epochs=1).cache
    assert not plan(training_tokens=500_000).cache


def test_auto_streams_several_passes_whose_cache_would_not_fit():
    verdict = plan(free=1 * GB)
    assert not verdict.cache and "would not fit" in verdict.reason


def test_always_refuses_a_cache_that_cannot_fit_and_says_how_large_and_what_to_change():
    with pytest.raises(DiskFull, match=r"needs 2\.\d GB.*Set cache_activations to auto or never") as err:
        plan(cache_activations="always", free=1 * GB)
    assert err.value.plan.cache_bytes == cache_bytes(1_000_000, 1024)


def test_a_budget_within_one_pass_caches_only_the_rows_it_reads():
    verdict = plan(cache_activations="always", training_tokens=100_000)
    assert verdict.cache_bytes == cache_bytes(rows_for_budget(100_000, 0.05), 1024)


def test_the_rows_a_budget_reads_leave_exactly_the_budget_to_train_on():
    for budget in (1, 99, 100_000, 10_000_000):
        rows = rows_for_budget(budget, 0.05)
        assert budget <= rows - eval_rows(rows, 0.05) <= budget + 1


def test_checkpoints_that_cannot_fit_are_refused_even_when_streaming():
    with pytest.raises(DiskFull, match="Lower hidden_dim or free disk space"):
        plan(cache_activations="never", free=10**6)


def test_a_streamed_runs_checkpoints_count_the_rows_of_each_sequence_they_keep():
    streamed, cached = plan(cache_activations="never", sequences=4000), plan(cache_activations="always", sequences=4000)
    assert streamed.checkpoint_bytes == CHECKPOINTS_ON_DISK * (checkpoint_bytes(1024, 4096) + seek_record_bytes(4000))
    assert cached.checkpoint_bytes == CHECKPOINTS_ON_DISK * checkpoint_bytes(1024, 4096)


def test_a_pass_is_windows_for_concat_and_a_line_or_a_document_each_otherwise():
    counts = dict(rows_per_pass=1000, documents=7, lines=30, max_sequence_length=128)
    assert [estimate_sequences_per_pass(packing=p, **counts) for p in ("concat", "lines", "documents")] == [8, 30, 7]


def test_a_models_download_on_the_data_disk_is_counted_beside_the_runs_files():
    alone = plan()
    with_weights = plan(download_bytes=16 * GB)
    assert with_weights.needed_bytes == alone.needed_bytes + 16 * GB and with_weights.download_bytes == 16 * GB
    # The cache that fit alone does not fit beside the weights: auto streams instead.
    assert plan(free=18 * GB).cache and not plan(free=18 * GB, download_bytes=16 * GB).cache
    with pytest.raises(DiskFull, match="the model's weights to download, 16.0 GB, checkpoints"):
        plan(cache_activations="never", free=10 * GB, download_bytes=16 * GB)


def test_a_download_to_another_disk_is_checked_against_that_disk_alone():
    elsewhere = plan(download_bytes=16 * GB, download_free=20 * GB)
    assert elsewhere.needed_bytes == plan().needed_bytes and elsewhere.download_free_bytes == 20 * GB
    with pytest.raises(DiskFull, match="weights are 16.0 GB to download but the disk of the hub cache has 10.0 GB free"):
        plan(download_bytes=16 * GB, download_free=10 * GB)
