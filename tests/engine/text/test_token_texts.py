"""Tokens read as they do inside a sentence, for every tokenizer family the tests load."""
import pytest
from transformers import AutoTokenizer

from engine.text.tokens import token_texts


@pytest.mark.parametrize("model_dir", ["tiny_gpt2_dir", "minilm_dir"])
def test_joining_the_token_texts_gives_back_the_sentence(model_dir, request):
    tokenizer = AutoTokenizer.from_pretrained(request.getfixturevalue(model_dir))
    sentence = "the sprinter was running quickly"
    ids = tokenizer(sentence, add_special_tokens=False)["input_ids"]
    texts = token_texts(tokenizer, ids)
    assert "".join(texts[i] for i in ids).strip() == sentence
    assert len(set(ids)) == len(texts)


def test_wordpiece_continuations_join_and_special_tokens_keep_their_names(minilm_dir):
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    ids = tokenizer("unbelievably")["input_ids"]  # [CLS] un ##bel ##ie ##va ##bly [SEP], or similar
    texts = token_texts(tokenizer, ids)
    assert texts[ids[0]] == "[CLS]" and texts[ids[-1]] == "[SEP]"
    assert "".join(texts[i] for i in ids[1:-1]).strip() == "unbelievably"
    assert not any(text.startswith("##") for text in texts.values())
