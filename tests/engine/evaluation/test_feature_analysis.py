import dataclasses

import numpy as np
import pytest
import torch

from engine.errors import AnalysisCancelled, EngineError
from engine.evaluation.features import (
    HIST_EDGES,
    FeatureAnalysis,
    analyze_features,
    load_analysis,
    logit_effects,
    save_analysis,
)
from engine.sae import build_sae

D_IN, D_SAE = 8, 6
# Feature i reads and writes input dimension PERM[i] with sign SIGN[i]: orthonormal directions
# whose products are exact in float32, so the codes equal the planted values to the bit.
PERM = [3, 0, 6, 1, 7, 4]
SIGN = [1.0, -1.0, 1.0, 1.0, -1.0, 1.0]
STARTS = np.array([0, 10, 25, 30, 50], dtype=np.int64)  # sequences of 10, 15, 5, 20 and 10 tokens
N_ROWS = 60
TOKENS = (np.arange(N_ROWS) * 37 % 97 + 1000).astype(np.int32)  # all different


def planted_sae():
    sae = build_sae("relu", D_IN, D_SAE)
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_dec.zero_()
        for feature, (dim, sign) in enumerate(zip(PERM, SIGN)):
            sae.W_enc[dim, feature] = sign
            sae.W_dec[feature, dim] = sign
    return sae


def planted_codes():
    """What each row should fire, feature by feature."""
    codes = np.zeros((N_ROWS, D_SAE), dtype=np.float32)
    rows = np.arange(0, N_ROWS, 2)
    codes[rows, 0] = (rows * 13 % 40 + 1) / 8  # fires on 30 rows, with some ties
    codes[[5, 33, 40, 41], 1] = [2.0**15, 3.0, 2.0**-15, -2.0]  # 3 firings, beyond both histogram ends
    codes[[3, 7], 2] = -1.0  # never fires
    codes[[0, 25, 27, 48, 49, 59], 3] = [2.0, 5.0, 0.5, 1.0, 4.0, 3.0]  # peaks at sequence ends
    codes[[12, 26, 27, 28], 4] = [3.0, 1.0, 2.0, 3.0]
    codes[1::3, 5] = 1.5  # twenty equal activations
    return codes


def rows_for(codes):
    x = np.zeros((len(codes), D_IN), dtype=np.float32)
    for feature, (dim, sign) in enumerate(zip(PERM, SIGN)):
        x[:, dim] = sign * codes[:, feature]
    return x


def analyze(activations, **kwargs):
    options = dict(token_ids=TOKENS, sequence_starts=STARTS, top_n=4, window=3)
    options.update(kwargs)
    return analyze_features(planted_sae(), 1.0, activations, **options)


def brute_force(sae, s, x, *, top_n, window, tokens=None, starts=None):
    """Every statistic from the full [n_rows, d_sae] code matrix, the slow obvious way."""
    codes = sae.eval().encode(torch.from_numpy(x) * s).detach().numpy()
    n_rows, d_sae = codes.shape
    top_values = np.zeros((d_sae, top_n), dtype=np.float32)
    top_rows = np.full((d_sae, top_n), -1, dtype=np.int64)
    width = 2 * window + 1
    window_values = np.full((d_sae, top_n, width), np.nan, dtype=np.float16)
    window_tokens = np.full((d_sae, top_n, width), -1, dtype=np.int32)
    sequence = np.searchsorted(starts, np.arange(n_rows), side="right") if starts is not None else None
    for feature in range(d_sae):
        fired = np.flatnonzero(codes[:, feature] > 0)
        ranked = fired[np.lexsort((fired, -codes[fired, feature]))][:top_n]
        top_values[feature, : len(ranked)] = codes[ranked, feature]
        top_rows[feature, : len(ranked)] = ranked
        if starts is None:
            continue
        for slot, row in enumerate(ranked):
            for j, pos in enumerate(range(row - window, row + window + 1)):
                if 0 <= pos < n_rows and sequence[pos] == sequence[row]:
                    window_values[feature, slot, j] = codes[pos, feature]
                    window_tokens[feature, slot, j] = tokens[pos]
    fired = codes > 0
    counts = fired.sum(axis=0)
    return dict(
        frequency=counts / n_rows,
        mean_activation=np.where(counts > 0, np.where(fired, codes, 0).sum(axis=0) / np.maximum(counts, 1), 0),
        max_activation=np.where(counts > 0, codes.max(axis=0), 0),
        top_values=top_values,
        top_rows=top_rows,
        window_values=window_values if starts is not None else None,
        window_tokens=window_tokens if starts is not None else None,
    )


def assert_same(first: FeatureAnalysis, second: FeatureAnalysis):
    for field in dataclasses.fields(FeatureAnalysis):
        a, b = getattr(first, field.name), getattr(second, field.name)
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            assert a is not None and b is not None, field.name
            assert a.dtype == b.dtype, field.name
            np.testing.assert_array_equal(a, b, err_msg=field.name)
        else:
            assert a == b, field.name


def test_it_finds_each_features_top_activations_in_order():
    result = analyze(rows_for(planted_codes()))
    codes = planted_codes()
    expected_rows0 = sorted(np.flatnonzero(codes[:, 0] > 0), key=lambda r: (-codes[r, 0], r))[:4]
    assert result.top_rows[0].tolist() == expected_rows0
    assert result.top_values[0].tolist() == codes[expected_rows0, 0].tolist()
    assert result.top_rows[3].tolist() == [25, 49, 59, 0]
    assert result.top_values[3].tolist() == [5.0, 4.0, 3.0, 2.0]
    # Equal activations: the earlier row ranks first.
    assert result.top_rows[4].tolist() == [12, 28, 27, 26]
    assert result.top_rows[5].tolist() == [1, 4, 7, 10]
    assert result.top_values.dtype == np.float32 and result.top_rows.dtype == np.int64


def test_a_feature_firing_fewer_than_top_n_times_leaves_empty_slots():
    result = analyze(rows_for(planted_codes()))
    assert result.top_rows[1].tolist() == [5, 33, 40, -1]
    assert result.top_values[1].tolist() == [2.0**15, 3.0, 2.0**-15, 0.0]
    assert np.isnan(result.window_values[1, 3]).all()
    assert (result.window_tokens[1, 3] == -1).all()


def test_a_dead_feature_has_only_empty_slots_and_zero_statistics():
    result = analyze(rows_for(planted_codes()))
    assert (result.top_rows[2] == -1).all() and (result.top_values[2] == 0).all()
    assert result.frequency[2] == 0 and result.mean_activation[2] == 0 and result.max_activation[2] == 0
    assert result.hist_counts[2].sum() == 0
    assert np.isnan(result.window_values[2]).all() and (result.window_tokens[2] == -1).all()


def test_frequency_mean_and_max_are_exact():
    codes = planted_codes()
    result = analyze(rows_for(codes))
    fired = codes > 0
    np.testing.assert_array_equal(result.frequency, fired.sum(axis=0) / N_ROWS)
    expected_mean = np.array([codes[fired[:, f], f].mean() if fired[:, f].any() else 0 for f in range(D_SAE)])
    np.testing.assert_allclose(result.mean_activation, expected_mean, rtol=1e-6)
    np.testing.assert_array_equal(result.max_activation, np.where(fired.any(axis=0), codes.max(axis=0), 0))
    assert result.frequency.dtype == np.float64 and result.mean_activation.dtype == np.float32
    assert result.frequency[1] == 3 / 60  # the negative activation does not count


def test_histogram_counts_every_firing_and_clips_to_the_end_bins():
    codes = planted_codes()
    result = analyze(rows_for(codes))
    assert result.hist_edges.dtype == np.float32 and result.hist_edges.tolist() == HIST_EDGES.tolist()
    assert result.hist_counts.shape == (D_SAE, len(HIST_EDGES) - 1) and result.hist_counts.dtype == np.int64
    np.testing.assert_array_equal(result.hist_counts.sum(axis=1), (codes > 0).sum(axis=0))
    # 2^-15 (log10 -4.5) and 2^15 (4.5) lie outside [-4, 4]; 3.0 (log10 0.477) is in bin 26.
    assert result.hist_counts[1, 0] == 1 and result.hist_counts[1, -1] == 1 and result.hist_counts[1, 26] == 1


def test_windows_stop_at_the_start_and_end_of_the_peaks_sequence():
    codes = planted_codes()
    result = analyze(rows_for(codes))
    nan = np.nan
    # Row 25 starts the sequence [25, 30): rows 22-24 belong to the previous one.
    np.testing.assert_array_equal(result.window_tokens[3, 0], [-1, -1, -1, *TOKENS[25:29]])
    np.testing.assert_array_equal(result.window_values[3, 0], [nan, nan, nan, 5.0, 0.0, 0.5, 0.0])
    # Row 49 ends the sequence [30, 50): rows 50-52 exist but belong to the next one.
    np.testing.assert_array_equal(result.window_tokens[3, 1], [*TOKENS[46:50], -1, -1, -1])
    np.testing.assert_array_equal(result.window_values[3, 1], [0.0, 0.0, 1.0, 4.0, nan, nan, nan])
    # The last and the first row of the whole corpus.
    np.testing.assert_array_equal(result.window_tokens[3, 2], [*TOKENS[56:60], -1, -1, -1])
    np.testing.assert_array_equal(result.window_tokens[3, 3], [-1, -1, -1, *TOKENS[0:4]])
    # Row 28 in the 5-token sequence [25, 30).
    np.testing.assert_array_equal(result.window_values[4, 1], [0.0, 1.0, 2.0, 3.0, 0.0, nan, nan])
    assert result.window_values.dtype == np.float16 and result.window_tokens.dtype == np.int32
    assert result.window_values.shape == (D_SAE, 4, 7)


def test_chunk_boundaries_never_change_the_result():
    x = rows_for(planted_codes())
    whole = analyze(x, window=12, chunk_rows=4096)
    for chunk_rows in (1, 7, 25):
        assert_same(analyze(x, window=12, chunk_rows=chunk_rows), whole)


def test_it_matches_a_brute_force_analysis():
    x = rows_for(planted_codes())
    expected = brute_force(planted_sae(), 1.0, x, top_n=4, window=5, tokens=TOKENS, starts=STARTS)
    result = analyze(x, window=5, chunk_rows=9)
    for name, value in expected.items():
        np.testing.assert_allclose(getattr(result, name), value, rtol=1e-6, err_msg=name)


def test_the_scaling_factor_is_applied_before_encoding():
    x = rows_for(planted_codes())
    s = np.float32(0.37)
    scaled = analyze_features(planted_sae(), float(s), x, token_ids=TOKENS, sequence_starts=STARTS, top_n=4, window=3)
    assert_same(scaled, analyze(x * s))
    np.testing.assert_allclose(scaled.top_values[3], np.float32([5.0, 4.0, 3.0, 2.0]) * s, rtol=1e-6)


def test_a_float16_memmap_reads_like_an_array_in_memory(tmp_path):
    x16 = rows_for(planted_codes()).astype(np.float16)
    written = np.lib.format.open_memmap(tmp_path / "acts.npy", mode="w+", dtype=np.float16, shape=x16.shape)
    written[:] = x16
    written.flush()
    expected = analyze(x16.astype(np.float32), chunk_rows=7)
    assert_same(analyze(written, chunk_rows=7), expected)
    loaded = np.load(tmp_path / "acts.npy", mmap_mode="r")
    assert_same(analyze(loaded, chunk_rows=7), expected)
    # A slice of a memmap keeps its parent's file offset; it must still read its own rows.
    tail = analyze_features(planted_sae(), 1.0, loaded[30:], chunk_rows=7)
    assert_same(tail, analyze_features(planted_sae(), 1.0, x16[30:].astype(np.float32), chunk_rows=7))


def test_without_tokens_the_windows_are_none_and_the_statistics_remain():
    x = rows_for(planted_codes())
    bare = analyze_features(planted_sae(), 1.0, x, top_n=4, window=3, chunk_rows=7)
    full = analyze(x)
    assert bare.window_values is None and bare.window_tokens is None
    for name in ("frequency", "mean_activation", "max_activation", "hist_counts", "top_values", "top_rows"):
        np.testing.assert_array_equal(getattr(bare, name), getattr(full, name), err_msg=name)


def test_tokens_without_sequence_starts_are_rejected():
    with pytest.raises(EngineError, match="go together"):
        analyze_features(planted_sae(), 1.0, rows_for(planted_codes()), token_ids=TOKENS)


def test_should_stop_cancels_between_chunks():
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(AnalysisCancelled):
        analyze(rows_for(planted_codes()), chunk_rows=7, should_stop=should_stop)
    assert len(calls) == 3


def test_progress_reaches_every_row():
    progress = []
    analyze(rows_for(planted_codes()), chunk_rows=7, on_progress=lambda done, total: progress.append((done, total)))
    assert progress[0] == (7, N_ROWS) and progress[-1] == (N_ROWS, N_ROWS)
    assert len(progress) == 9 and [d for d, _ in progress] == sorted(d for d, _ in progress)


def test_a_topk_sae_runs_and_its_frequencies_respect_k():
    rng = np.random.default_rng(0)
    sae = build_sae("topk", 16, 32, k=3)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    sae.initialize_(torch.from_numpy(x), generator=torch.Generator().manual_seed(0))
    tokens = rng.integers(0, 500, size=300).astype(np.int32)
    starts = np.array([0, 40, 41, 100, 230], dtype=np.int64)
    result = analyze_features(sae, 1.7, x, token_ids=tokens, sequence_starts=starts, top_n=5, window=4, chunk_rows=64)
    assert result.frequency.sum() <= 3 + 1e-9
    np.testing.assert_array_equal(result.hist_counts.sum(axis=1), np.round(result.frequency * 300).astype(np.int64))
    expected = brute_force(sae, 1.7, x, top_n=5, window=4, tokens=tokens, starts=starts)
    for name in ("top_rows", "window_tokens"):
        np.testing.assert_array_equal(getattr(result, name), expected[name], err_msg=name)
    for name in ("frequency", "mean_activation", "max_activation", "top_values"):
        np.testing.assert_allclose(getattr(result, name), expected[name], rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(result.window_values, expected["window_values"], rtol=2e-3, atol=1e-6)


def test_logit_effects_match_a_brute_force_product_for_every_feature():
    generator = torch.Generator().manual_seed(0)
    sae = build_sae("relu", D_IN, 10)
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(10, D_IN, generator=generator))
    unembedding = torch.randn(50, D_IN, generator=generator)
    gain = torch.rand(D_IN, generator=generator) + 0.5
    top_ids, top_values, bottom_ids, bottom_values = logit_effects(
        sae, 0.5, unembedding, norm_weight=gain, n=4, chunk_features=3
    )
    logits = ((sae.W_dec.detach() / 0.5 * gain) @ unembedding.T).numpy()
    order = np.argsort(-logits, axis=1)
    np.testing.assert_array_equal(top_ids, order[:, :4])
    np.testing.assert_array_equal(bottom_ids, order[:, ::-1][:, :4])
    np.testing.assert_allclose(top_values, np.take_along_axis(logits, order[:, :4], axis=1), rtol=1e-5)
    np.testing.assert_allclose(bottom_values, np.take_along_axis(logits, order[:, ::-1][:, :4], axis=1), rtol=1e-5)
    assert top_ids.shape == (10, 4) and top_ids.dtype == np.int64 and top_values.dtype == np.float32


def test_logit_effects_reject_an_unembedding_of_another_width():
    with pytest.raises(EngineError, match="width"):
        logit_effects(planted_sae(), 1.0, torch.zeros(20, D_IN + 1))


def test_an_analysis_survives_a_save_and_load_round_trip(tmp_path):
    result = analyze(rows_for(planted_codes()))
    ids = np.arange(D_SAE * 2, dtype=np.int64).reshape(D_SAE, 2)
    ones = np.ones((D_SAE, 2), np.float32)
    result = dataclasses.replace(result, logit_top_ids=ids, logit_top_values=ones,
                                 logit_bottom_ids=ids[:, ::-1].copy(), logit_bottom_values=-ones)
    folder = tmp_path / "analysis"
    save_analysis(result, folder)
    assert not (tmp_path / "analysis.partial").exists()
    loaded = load_analysis(folder)
    assert isinstance(loaded.top_rows, np.memmap) and isinstance(loaded.window_values, np.memmap)
    assert_same(loaded, result)
    assert_same(load_analysis(folder, mmap=False), result)


def test_saving_again_replaces_the_old_analysis_and_missing_arrays_load_as_none(tmp_path):
    folder = tmp_path / "analysis"
    save_analysis(analyze(rows_for(planted_codes())), folder)
    bare = analyze_features(planted_sae(), 1.0, rows_for(planted_codes()), top_n=2)
    save_analysis(bare, folder)
    loaded = load_analysis(folder)
    assert loaded.top_n == 2 and loaded.window_values is None and loaded.logit_top_ids is None
    assert not (folder / "window_values.npy").exists()


def test_loading_a_missing_or_incomplete_folder_says_so(tmp_path):
    with pytest.raises(EngineError, match="does not exist"):
        load_analysis(tmp_path / "nowhere")
    folder = tmp_path / "analysis"
    save_analysis(analyze(rows_for(planted_codes())), folder)
    (folder / "top_rows.npy").unlink()
    with pytest.raises(EngineError, match="incomplete.*top_rows.npy"):
        load_analysis(folder)
