"""How one token reads inside running text, for showing contexts token by token.

`tokenizer.decode([id])` loses what a token means at its place: WordPiece drops the space before a
word and shows "##" on continuations, SentencePiece drops the leading space of "▁word". Joining the
token after a fixed anchor token and cutting the anchor's text off gives the token as it reads in
the middle of a sentence: " the", "ing", "\\n"."""


def token_texts(tokenizer, ids) -> dict[int, str]:
    """{id: its text in running text}; special tokens keep their name ("[CLS]", "<|endoftext|>")."""
    special = set(tokenizer.all_special_tokens or [])
    anchor = _anchor(tokenizer)
    base = tokenizer.convert_tokens_to_string([anchor]) if anchor is not None else None
    texts = {}
    for token_id in ids:
        token_id = int(token_id)
        piece = tokenizer.convert_ids_to_tokens(token_id)
        if piece is None:
            texts[token_id] = f"<{token_id}>"
            continue
        if piece in special or anchor is None:
            texts[token_id] = piece if piece in special else tokenizer.decode([token_id])
            continue
        joined = tokenizer.convert_tokens_to_string([anchor, piece])
        texts[token_id] = joined[len(base):] if joined.startswith(base) else tokenizer.decode([token_id])
    return texts


def _anchor(tokenizer):
    """A plain word piece ("a"), or None when the tokenizer has none."""
    try:
        ids = tokenizer("a", add_special_tokens=False)["input_ids"]
    except (TypeError, ValueError, KeyError):
        return None
    return tokenizer.convert_ids_to_tokens(ids[-1]) if ids else None
