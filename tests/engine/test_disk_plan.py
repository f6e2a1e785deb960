"""Whether a run caches its activations, and what it needs of the disk (engine.disk). The expected
sizes are worked out here by hand, from what the files hold, never with the planner's own formulas;
and one is measured on the files a real extraction writes."""
import pytest

from engine.disk import DiskFull, cache_bytes, estimate_sequences_per_pass, plan_disk, rows_for_budget
from engine.defaults import eval_rows

GB = 10**9
# The default plan below: 1,000,000 rows of d_model 1024, a 4096-feature SAE.
# Its cache: per row 1024 float16 values (2,048 B) and an int32 token id (4 B), plus 4,096 B of
# .npy headers: 1,000,000 x 2,052 + 4,096.
CACHE = 2_052_004_096
# One checkpoint: float32 (4 B) weights and Adam's two moments (x 3) of the encoder and decoder
# (2 x 1024 x 4096 = 8,388,608), the encoder bias and the thresholds (2 x 4096) and the decoder
# bias (1024): 8,397,824 parameters x 12 B. Two are kept on disk at once.
CHECKPOINTS = 2 * 100_773_888


def plan(**overrides):
    values = dict(cache_activations="auto", rows_per_pass=1_000_000, d_model=1024, d_sae=4096, max_epochs=3,
                  eval_fraction=0.05, training_tokens=None, free=100 * GB)
    values.update(overrides)
    return plan_disk(**values)


def test_a_cache_is_two_bytes_a_value_and_four_a_token_id():
    assert cache_bytes(1000, 512) == 1_032_096  # 1000 x (512 x 2 + 4) = 1,028,000, and 4,096 of headers


@pytest.mark.slow
def test_the_planned_cache_holds_the_files_a_real_extraction_writes(tiny_gpt2_dir, sample_texts, tmp_path):
    from engine.activations.extract import extract_activations
    from engine.models.loading import load_model
    from engine.models.resolve import resolve_model

    loaded = load_model(resolve_model(str(tiny_gpt2_dir), models_dir=None), device="cpu")
    out = tmp_path / "cache"
    out.mkdir()
    result = extract_activations(loaded, sample_texts * 8, layer_number=1, batch_size=16, max_sequence_length=24,
                                 out_path=out / "a.npy")
    rows, d_model = result.n_tokens, 32  # the tiny GPT-2's width
    assert result.d_model == d_model and rows > 2000  # more token ids (4 B each) than the headers allowance
    # The rows file is float16 and the token ids int32, each behind a 128-byte .npy header.
    assert result.path.stat().st_size == 128 + rows * d_model * 2
    assert result.tokens_path.stat().st_size == 128 + rows * 4
    # The plan counts these two files and an allowance for the headers: not a row more or less.
    # (Not the sequence starts and arrival order beside them, 8 B per sequence each.)
    written = result.path.stat().st_size + result.tokens_path.stat().st_size
    assert written <= cache_bytes(rows, d_model) <= written + 4096


def test_several_passes_cache_when_the_cache_fits():
    verdict = plan()
    assert verdict.cache and verdict.passes == 3 and verdict.cache_bytes == CACHE
    assert verdict.needed_bytes == CACHE + CHECKPOINTS == 2_253_551_872


def test_one_pass_streams_whatever_the_disk():
    assert not plan(max_epochs=1).cache
    assert not plan(training_tokens=500_000).cache


def test_auto_streams_several_passes_whose_cache_would_not_fit():
    verdict = plan(free=1 * GB)
    assert not verdict.cache and "would not fit" in verdict.reason


def test_always_refuses_a_cache_that_cannot_fit_and_says_how_large_and_what_to_change():
    with pytest.raises(DiskFull, match=r"needs 2\.3 GB.*Set cache_activations to auto or never") as err:
        plan(cache_activations="always", free=1 * GB)
    assert err.value.plan.cache_bytes == CACHE


def test_a_budget_within_one_pass_caches_only_the_rows_it_reads():
    verdict = plan(cache_activations="always", training_tokens=100_000)
    # 100,000 training rows and the held-out 5% of the 105,264 rows they are 95% of: 5,263 more.
    assert verdict.cache_bytes == 105_263 * 2_052 + 4_096


def test_the_rows_a_budget_reads_leave_exactly_the_budget_to_train_on():
    for budget in (1, 99, 100_000, 10_000_000):
        rows = rows_for_budget(budget, 0.05)
        assert budget <= rows - eval_rows(rows, 0.05) <= budget + 1


def test_checkpoints_that_cannot_fit_are_refused_even_when_streaming():
    with pytest.raises(DiskFull, match="Lower hidden_dim or free disk space"):
        plan(cache_activations="never", free=10**6)


def test_a_streamed_runs_checkpoints_count_the_rows_of_each_sequence_they_keep():
    streamed, cached = plan(cache_activations="never", sequences=4000), plan(cache_activations="always", sequences=4000)
    assert streamed.checkpoint_bytes == CHECKPOINTS + 2 * 4000 * 4  # an int32 row count per sequence in each
    assert cached.checkpoint_bytes == CHECKPOINTS


def test_a_pass_is_windows_for_concat_and_a_line_or_a_document_each_otherwise():
    counts = dict(rows_per_pass=1000, documents=7, lines=30, max_sequence_length=128)
    assert [estimate_sequences_per_pass(packing=p, **counts) for p in ("concat", "lines", "documents")] == [8, 30, 7]


def test_a_models_download_on_the_data_disk_is_counted_beside_the_runs_files():
    alone = plan()
    with_weights = plan(download_bytes=16 * GB)
    assert alone.needed_bytes == CACHE + CHECKPOINTS
    assert with_weights.needed_bytes == CACHE + CHECKPOINTS + 16 * GB and with_weights.download_bytes == 16 * GB
    # The cache that fit alone does not fit beside the weights: auto streams instead.
    assert plan(free=18 * GB).cache and not plan(free=18 * GB, download_bytes=16 * GB).cache
    with pytest.raises(DiskFull, match="the model's weights to download, 16.0 GB, checkpoints"):
        plan(cache_activations="never", free=10 * GB, download_bytes=16 * GB)


def test_a_download_to_another_disk_is_checked_against_that_disk_alone():
    elsewhere = plan(download_bytes=16 * GB, download_free=20 * GB)
    assert elsewhere.needed_bytes == CACHE + CHECKPOINTS and elsewhere.download_free_bytes == 20 * GB
    with pytest.raises(DiskFull, match="weights are 16.0 GB to download but the disk of the hub cache has 10.0 GB free"):
        plan(download_bytes=16 * GB, download_free=10 * GB)
