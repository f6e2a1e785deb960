import numpy as np
import pytest
import torch

from engine.activations.extract import extract_activations
from engine.errors import EngineError, ExtractionCancelled
from engine.models.loading import load_model
from engine.models.resolve import resolve_model

MAX_LEN = 24


@pytest.fixture(scope="module", params=["tiny_gpt2_dir", "tiny_llama_dir", "minilm_dir"])
def loaded(request):
    return load_model(resolve_model(str(request.getfixturevalue(request.param)), models_dir=None), device="cpu")


def model_input(loaded, text, *, prepend_bos=True):
    """The token ids the model is to see for one text, built here from the tokenizer: a causal
    LM's text after its tokenizer's BOS (GPT-2's tokenizer adds none itself), an encoder's text
    between the CLS and SEP its tokenizer adds."""
    tokenizer = loaded.tokenizer
    if loaded.config.model_type == "bert":
        return tokenizer(text, truncation=True, max_length=MAX_LEN)["input_ids"]
    if not prepend_bos:
        return tokenizer(text, add_special_tokens=False)["input_ids"][:MAX_LEN]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][: MAX_LEN - 1]
    return [tokenizer.bos_token_id, *ids] if ids else []


def row_ids(loaded, text, *, prepend_bos=True, exclude_special_tokens=True):
    """model_input without the special tokens' positions, which are no rows by default."""
    special = set(loaded.tokenizer.all_special_ids)
    return [t for t in model_input(loaded, text, prepend_bos=prepend_bos)
            if not (exclude_special_tokens and t in special)]


def reference_rows(loaded, texts, layer, *, prepend_bos=True, exclude_special_tokens=True):
    """Each sequence run alone, unpadded, through the full model: the ground truth."""
    special = set(loaded.tokenizer.all_special_ids)
    rows = []
    with torch.inference_mode():
        for text in texts:
            ids = model_input(loaded, text, prepend_bos=prepend_bos)
            out = loaded.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
            kept = [not (exclude_special_tokens and t in special) for t in ids]
            rows.append(out.hidden_states[layer + 1][0][torch.tensor(kept)].numpy())
    return np.concatenate(rows)


@pytest.mark.slow
def test_each_row_is_one_real_token_in_corpus_order(loaded, sample_texts, tmp_path):
    # The defaults: a BOS before a causal LM's text, and no row for a special token (the BOS, an
    # encoder's CLS and SEP), which the model still sees as context.
    layer = 1
    result = extract_activations(
        loaded, sample_texts, layer_number=layer, batch_size=8, max_sequence_length=MAX_LEN, out_path=tmp_path / "acts.npy"
    )
    stored = np.load(result.path)
    expected = reference_rows(loaded, sample_texts, layer)

    n_real = sum(len(row_ids(loaded, text)) for text in sample_texts)
    assert stored.shape == (n_real, loaded.config.hidden_size) == expected.shape
    assert (result.n_tokens, result.d_model, result.n_sequences) == (n_real, loaded.config.hidden_size, len(sample_texts))
    assert stored.dtype == np.float16
    # Stored as float16, so the comparison allows float16 rounding (rel. 2^-11) on top of atol 1e-4.
    np.testing.assert_allclose(stored.astype(np.float32), expected, atol=1e-4, rtol=1e-3)


def test_without_a_bos_or_exclusions_every_token_of_the_tokenized_text_is_a_row(loaded, sample_texts, tmp_path):
    result = extract_activations(
        loaded, sample_texts, layer_number=1, batch_size=8, max_sequence_length=MAX_LEN, out_path=tmp_path / "acts.npy",
        prepend_bos=False, exclude_special_tokens=False,
    )
    expected = reference_rows(loaded, sample_texts, 1, prepend_bos=False, exclude_special_tokens=False)
    n_real = sum(len(model_input(loaded, text, prepend_bos=False)) for text in sample_texts)
    assert expected.shape[0] == n_real == result.n_tokens
    np.testing.assert_allclose(np.load(result.path).astype(np.float32), expected, atol=1e-4, rtol=1e-3)


def test_blocks_after_the_chosen_layer_never_run(loaded, sample_texts, tmp_path):
    calls = []
    handle = loaded.blocks[-1].register_forward_hook(lambda *args: calls.append(1))
    try:
        extract_activations(
            loaded, sample_texts[:5], layer_number=0, batch_size=2, max_sequence_length=MAX_LEN, out_path=tmp_path / "a.npy"
        )
    finally:
        handle.remove()
    assert calls == []


def test_progress_counts_sequences_and_tokens(loaded, sample_texts, tmp_path):
    seen = []
    result = extract_activations(
        loaded, sample_texts, layer_number=0, batch_size=16, max_sequence_length=MAX_LEN,
        out_path=tmp_path / "a.npy", on_progress=lambda *p: seen.append(p),
    )
    assert [p[0] for p in seen] == [16, 32, 40]
    assert seen[-1] == (40, 40, result.n_tokens)


def test_cancelling_leaves_no_file_behind(loaded, sample_texts, tmp_path):
    calls = iter([False, True])
    out_dir = tmp_path / "activations"
    with pytest.raises(ExtractionCancelled):
        extract_activations(
            loaded, sample_texts, layer_number=0, batch_size=4, max_sequence_length=MAX_LEN,
            out_path=out_dir / "a.npy", should_stop=lambda: next(calls),
        )
    assert list(out_dir.iterdir()) == []


def test_a_layer_outside_the_model_is_rejected(loaded, sample_texts, tmp_path):
    n = len(loaded.blocks)
    with pytest.raises(EngineError, match=f"Layer {n} does not exist: this model has layers 0 to {n - 1}"):
        extract_activations(loaded, sample_texts, layer_number=n, batch_size=4, max_sequence_length=MAX_LEN, out_path=tmp_path / "a.npy")


def test_the_token_of_every_row_and_the_start_of_every_sequence_are_kept_beside_it(loaded, sample_texts, tmp_path):
    from engine.activations.cache import load_token_index

    texts = ["", *sample_texts[:5]]  # an empty text gives no rows and no sequence start
    result = extract_activations(loaded, texts, layer_number=0, batch_size=2, max_sequence_length=MAX_LEN,
                                 out_path=tmp_path / "acts.npy")
    token_ids, starts = load_token_index(result.path)
    expected = [ids for ids in (row_ids(loaded, text) for text in texts) if ids]
    assert token_ids.dtype == np.int32 and token_ids.tolist() == [t for ids in expected for t in ids]
    assert starts.tolist() == np.cumsum([0] + [len(ids) for ids in expected[:-1]]).tolist()
    assert (result.tokens_path, result.sequence_starts_path) == (tmp_path / "acts_tokens.npy",
                                                                tmp_path / "acts_sequence_starts.npy")
    assert load_token_index(tmp_path / "elsewhere.npy") is None
