"""Special tokens: a causal LM's sequences start with one BOS (prepend_bos, as TransformerLens and
SAELens feed them), and positions holding a special token are no rows by default
(exclude_special_tokens) while the model still sees them."""
import shutil

import numpy as np
import pytest

from engine.activations.extract import extract_activations
from engine.activations.cache import load_token_index
from engine.models.loading import load_model
from engine.models.resolve import resolve_model
from engine.text.sequences import encode, special_token_ids

MAX_LEN = 24


def load(model_dir):
    return load_model(resolve_model(str(model_dir), models_dir=None), device="cpu")


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir):
    return load(tiny_gpt2_dir)


@pytest.fixture(scope="module")
def bert(minilm_dir):
    return load(minilm_dir)


def extract(loaded, texts, path, **options):
    return extract_activations(loaded, texts, layer_number=0, batch_size=8, max_sequence_length=MAX_LEN,
                               out_path=path, **options)


def test_every_bert_sequence_loses_its_cls_and_sep(bert, sample_texts, tmp_path):
    lengths = [len(ids) for ids in bert.tokenizer(sample_texts, truncation=True, max_length=MAX_LEN)["input_ids"]]
    excluded = extract(bert, sample_texts, tmp_path / "a.npy")
    assert excluded.n_tokens == sum(lengths) - 2 * len(sample_texts)
    tokens, starts = load_token_index(excluded.path)
    assert not set(tokens.tolist()) & {bert.tokenizer.cls_token_id, bert.tokenizer.sep_token_id}
    assert starts.tolist() == np.cumsum([0] + [n - 2 for n in lengths[:-1]]).tolist()

    kept = extract(bert, sample_texts, tmp_path / "b.npy", exclude_special_tokens=False)
    assert kept.n_tokens == sum(lengths) and np.load(kept.path).shape[0] == sum(lengths)
    # An encoder's tokenizer adds its own CLS and SEP: prepend_bos does not apply.
    assert excluded.prepend_bos is False and kept.prepend_bos is False


def test_the_bos_put_before_a_gpt2_sequence_is_context_but_no_row(gpt2, sample_texts, tmp_path):
    bos = gpt2.tokenizer.bos_token_id
    text_ids = [ids[: MAX_LEN - 1] for ids in gpt2.tokenizer(sample_texts)["input_ids"]]
    assert all(bos not in ids for ids in text_ids)  # GPT-2's tokenizer adds no BOS of its own

    excluded = extract(gpt2, sample_texts, tmp_path / "a.npy")
    assert excluded.prepend_bos is True and excluded.n_tokens == sum(len(ids) for ids in text_ids)
    assert load_token_index(excluded.path)[0].tolist() == [t for ids in text_ids for t in ids]

    kept = extract(gpt2, sample_texts, tmp_path / "b.npy", exclude_special_tokens=False)
    tokens, starts = load_token_index(kept.path)
    assert kept.n_tokens == sum(len(ids) + 1 for ids in text_ids)
    assert (tokens[starts] == bos).all()
    # The BOS changes what the text's tokens see: their rows are not those of a BOS-less input.
    without = extract(gpt2, sample_texts, tmp_path / "c.npy", prepend_bos=False)
    assert without.prepend_bos is False and without.n_tokens == excluded.n_tokens
    assert not np.allclose(np.load(without.path), np.load(excluded.path))


@pytest.mark.slow
def test_a_tokenizer_that_adds_its_own_bos_gets_one_not_two(tiny_gpt2_dir, tmp_path, sample_texts):
    from transformers import AutoTokenizer

    folder = tmp_path / "bos-adding"
    shutil.copytree(tiny_gpt2_dir, folder)
    AutoTokenizer.from_pretrained(folder, add_bos_token=True).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    own = tokenizer(sample_texts[0])["input_ids"]
    assert own[0] == tokenizer.bos_token_id and own[1] != tokenizer.bos_token_id  # as Llama's does

    sequences = encode(tokenizer, sample_texts[:3], max_sequence_length=MAX_LEN, causal=True, prepend_bos=True,
                       exclude_special_tokens=True)
    assert sequences.ids[0] == own[:MAX_LEN] and sequences.prepend_bos is True
    assert [ids.count(tokenizer.bos_token_id) for ids in sequences.ids] == [1, 1, 1]
    # prepend_bos off leaves it out, as TransformerLens' prepend_bos=False does.
    off = encode(tokenizer, sample_texts[:1], max_sequence_length=MAX_LEN, causal=True, prepend_bos=False,
                 exclude_special_tokens=True)
    assert off.ids[0] == own[1 : MAX_LEN + 1] and off.prepend_bos is False


def test_the_bos_counts_in_the_maximum_sequence_length(gpt2, sample_texts):
    long_text = sample_texts[-1]
    sequences = encode(gpt2.tokenizer, [long_text], max_sequence_length=8, causal=True, prepend_bos=True,
                       exclude_special_tokens=True)
    assert len(sequences.ids[0]) == 8 and sequences.rows.tolist() == [7]
    assert sequences.ids[0][1:] == gpt2.tokenizer(long_text)["input_ids"][:7]


def test_a_text_of_nothing_but_special_tokens_gives_no_rows_and_no_sequence(gpt2, sample_texts, tmp_path):
    texts = [sample_texts[0], "<|endoftext|><|endoftext|>", sample_texts[1]]
    result = extract(gpt2, texts, tmp_path / "a.npy")
    tokens, starts = load_token_index(result.path)
    first = len(gpt2.tokenizer(sample_texts[0])["input_ids"])
    assert starts.tolist() == [0, first] and gpt2.tokenizer.eos_token_id not in tokens.tolist()


def test_the_special_ids_include_the_padding_engine_loading_gives_a_tokenizer(gpt2, bert):
    assert gpt2.tokenizer.pad_token_id in special_token_ids(gpt2.tokenizer)
    ids = special_token_ids(bert.tokenizer)
    assert {bert.tokenizer.cls_token_id, bert.tokenizer.sep_token_id, bert.tokenizer.pad_token_id} <= ids


@pytest.mark.slow
@pytest.mark.parametrize("exclude", [True, False])
def test_the_ce_splice_leaves_a_special_tokens_position_as_it_was_when_excluding(tiny_gpt2_dir, sample_texts, exclude):
    # Block 2 reads block 1's output: at the BOS (position 0) it must be the clean value under the
    # SAE splice and the zero-ablation when special tokens are excluded, and not otherwise.
    from engine.evaluation.next_token import ce_loss_evaluation

    loaded = load_model(resolve_model(str(tiny_gpt2_dir), models_dir=None), device="cpu", with_lm_head=True)
    seen = []
    handle = loaded.blocks[2].register_forward_pre_hook(lambda _m, args: seen.append(args[0][:, 0].clone()))
    try:
        result = ce_loss_evaluation(loaded, sample_texts[:4], layer_number=1, reconstruct=lambda x: x * 0 + 3.0,
                                    max_sequence_length=MAX_LEN, batch_size=4, exclude_special_tokens=exclude)
    finally:
        handle.remove()
    clean, with_sae, zero = seen  # one batch: the clean, SAE and zero-ablated passes
    assert clean.equal(with_sae) is exclude and clean.equal(zero) is exclude
    assert result["ce_loss_with_sae"] != result["ce_loss_clean"]  # the text positions were replaced
