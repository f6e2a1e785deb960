"""How a corpus's texts become the model's input sequences, and which of their positions are rows.

Extraction and the next-token evaluation both go through here, so the evaluation sees exactly the
sequences the SAE was trained on.

- prepend_bos (a causal LM): every sequence starts with the tokenizer's BOS token, as
  TransformerLens (default_prepend_bos) and SAELens (prepend_bos=True) feed a causal LM: the text
  is tokenized without the tokenizer's own special tokens and the BOS put in front, so a tokenizer
  that adds its own (Llama's, Gemma's) gets one BOS, not two, and one that adds none (GPT-2's,
  SmolLM2's) gets one too. The BOS counts in max_sequence_length (SAELens' context_size). A
  tokenizer with no BOS token (Qwen's) gets none. An encoder's tokenizer adds its own CLS and SEP:
  prepend_bos does not apply.
- exclude_special_tokens: positions holding one of the tokenizer's special ids (BOS, EOS, CLS,
  SEP, padding, UNK, ...: SAELens' get_special_token_ids) are not rows. The model still sees them
  as context. Their norms are outliers (the BOS is an attention sink) that would otherwise
  dominate the SAE's loss.
"""
from dataclasses import dataclass

import numpy as np


@dataclass
class Sequences:
    ids: list  # the model's input of each text (lists of token ids)
    keep: list  # per text, a bool array: which positions are rows
    prepend_bos: bool  # effective: a BOS was put in front of every non-empty sequence

    @property
    def rows(self) -> np.ndarray:
        """Rows of each text (int64)."""
        return np.array([int(k.sum()) for k in self.keep], dtype=np.int64)

    @property
    def input_lengths(self) -> np.ndarray:
        return np.array([len(seq) for seq in self.ids], dtype=np.int64)


def special_token_ids(tokenizer) -> frozenset[int]:
    """The tokenizer's special ids, its padding included (engine.models.loading gives every tokenizer one)."""
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "cls_token_id", "sep_token_id", "unk_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            ids.add(value)
    return frozenset(ids)


def effective_prepend_bos(tokenizer, *, causal: bool, prepend_bos: bool) -> bool:
    """Whether sequences start with a BOS put there: asked for, a causal LM, and a BOS to put."""
    return bool(prepend_bos and causal and getattr(tokenizer, "bos_token_id", None) is not None)


def encode(tokenizer, texts, *, max_sequence_length: int, causal: bool, prepend_bos: bool,
           exclude_special_tokens: bool) -> Sequences:
    if max_sequence_length < 1:
        raise ValueError("max_sequence_length must be at least 1")
    texts = list(texts)
    bos = effective_prepend_bos(tokenizer, causal=causal, prepend_bos=prepend_bos)
    if not causal:
        ids = tokenizer(texts, truncation=True, max_length=max_sequence_length, padding=False)["input_ids"]
    elif bos:
        room = max_sequence_length - 1
        encoded = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max(room, 1), padding=False)
        # A text with no tokens stays empty: a lone BOS is no text to learn from.
        ids = [[tokenizer.bos_token_id, *seq[:room]] if seq else [] for seq in encoded["input_ids"]]
    else:
        ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_sequence_length,
                        padding=False)["input_ids"]
    return sequences_of(tokenizer, [list(seq) for seq in ids], prepend_bos=bos, exclude_special_tokens=exclude_special_tokens)


def sequences_of(tokenizer, ids: list, *, prepend_bos: bool, exclude_special_tokens: bool) -> Sequences:
    """Sequences of token ids made elsewhere (engine.text.packing), with their rows marked."""
    special = np.fromiter(special_token_ids(tokenizer), dtype=np.int64)
    if exclude_special_tokens:
        keep = [~np.isin(np.asarray(seq, dtype=np.int64), special) for seq in ids]
    else:
        keep = [np.ones(len(seq), dtype=bool) for seq in ids]
    return Sequences(ids=ids, keep=keep, prepend_bos=prepend_bos)


def concatenate(parts) -> Sequences:
    """One Sequences of several, in order."""
    parts = list(parts)
    return Sequences(ids=[i for p in parts for i in p.ids], keep=[k for p in parts for k in p.keep],
                     prepend_bos=bool(parts and parts[0].prepend_bos))
