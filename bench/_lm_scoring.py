"""bench/smollm2.py's scoring, apart from its runs: every SAE read from its SAELens-format folder
and scored by one function with plain Hugging Face forward hooks (EV, L0, CE with it spliced in,
KL, dead features), the sequences our evaluation makes, and which corpus lines our run held out.

The splice and the losses are written here, not taken from the app, so they check its
evaluation; what counts as a special token is the app's own rule (engine.text.sequences).
"""
import json
import math
from pathlib import Path

from engine.text.sequences import special_token_ids


def load_saelens_folder(folder: Path):
    """encode/decode from a SAELens-format folder's cfg.json and weights, written here from the
    format (not by either library): raw activations in, raw reconstruction out."""
    import torch
    from safetensors.torch import load_file

    cfg = json.loads((Path(folder) / "cfg.json").read_text())
    w = {k: v.float() for k, v in load_file(str(Path(folder) / "sae_weights.safetensors")).items()}
    if cfg.get("normalize_activations", "none") != "none":
        raise SystemExit(f"{folder}: normalize_activations {cfg['normalize_activations']!r} is not folded into the weights")
    architecture = cfg["architecture"]

    def encode(x):
        centred = x - w["b_dec"] if cfg.get("apply_b_dec_to_input", True) else x
        if architecture == "gated":
            magnitude = centred @ (w["W_enc"] * w["r_mag"].exp()) + w["b_mag"]
            return (centred @ w["W_enc"] + w["b_gate"] > 0).to(x.dtype) * magnitude.relu()
        pre = centred @ w["W_enc"] + w["b_enc"]
        if architecture == "topk":
            values, indices = pre.topk(int(cfg["k"]), dim=-1)
            return torch.zeros_like(pre).scatter(-1, indices, values.relu())
        if architecture == "jumprelu":
            return pre.relu() * (pre > w["threshold"])
        if architecture == "standard":
            return pre.relu()
        raise SystemExit(f"{folder}: architecture {architecture} is not read here")

    def decode(f):
        return f @ w["W_dec"] + w["b_dec"]

    return encode, decode


class Splice:
    """A forward hook on one HF module: captures its output, or replaces it by a function of it
    at the positions `keep` allows (elsewhere the output is left as it was)."""

    def __init__(self, module):
        self.replace, self.keep, self.captured = None, None, None
        self.handle = module.register_forward_hook(self)

    def __call__(self, _module, _inputs, output):
        import torch

        hidden = output[0] if isinstance(output, tuple) else output
        self.captured = hidden.detach()
        if self.replace is None:
            return None
        new = self.replace(hidden.float()).to(hidden.dtype)
        if self.keep is not None:
            new = torch.where(self.keep[..., None], new, hidden)
        return (new, *output[1:]) if isinstance(output, tuple) else new


def encode_sequences(tokenizer, texts: list[str], *, convention: str, context: int, max_tokens: int | None):
    """Token ids per text, as the app's evaluation makes them (engine/evaluation/next_token.py's _sequences).
    plain: the tokenizer's own ids, truncated to `context` (before prepend_bos); special: BOS,
    then the text's tokens without the tokenizer's own special tokens, `context` in all (an empty
    text stays empty), and only sequences with a prediction made from a non-special position.
    Sequences under two tokens are dropped; with max_tokens, kept until that many tokens."""
    special = special_token_ids(tokenizer)
    if convention == "plain":
        encoded = tokenizer(texts, truncation=True, max_length=context)["input_ids"]
    else:
        room = context - 1
        texts_ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max(room, 1))["input_ids"]
        encoded = [[tokenizer.bos_token_id, *ids[:room]] if ids else [] for ids in texts_ids]
    kept, budget = [], max_tokens
    for ids in encoded:
        if len(ids) < 2 or (convention == "special" and all(t in special for t in ids[:-1])):
            continue
        if budget is not None:
            if budget <= 0:
                break
            budget -= len(ids)
        kept.append(ids)
    return kept


def score(model, tokenizer, sequences, *, module_name: str, saes: dict, convention: str, batch_size: int,
          with_ablation: bool = True) -> dict:
    """Per SAE (name -> (encode, decode)): EV and L0 on the hook's activations at the spliced
    positions, CE loss with it spliced in, KL(clean || spliced), dead features; and the clean and
    zero-ablation losses. convention "special": no splice at special-token positions, no loss on
    predictions made from a special token; "plain": both everywhere."""
    import torch

    special = torch.tensor(sorted(special_token_ids(tokenizer)))
    splice = Splice(model.get_submodule(module_name))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sums = {name: {"ce": 0.0, "kl": 0.0, "res": 0.0, "l0": 0.0, "fired": None} for name in saes}
    base = {"ce_clean": 0.0, "ce_zero": 0.0, "kl_zero": 0.0, "n_pred": 0, "n_act": 0, "x": 0.0, "x2": 0.0}
    try:
        with torch.inference_mode():
            for start in range(0, len(sequences), batch_size):
                batch = sequences[start : start + batch_size]
                width = max(map(len, batch))
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.bool)
                for row, seq in enumerate(batch):
                    ids[row, : len(seq)] = torch.tensor(seq)
                    mask[row, : len(seq)] = True
                is_special = torch.isin(ids, special) if convention == "special" else torch.zeros_like(mask)
                act_mask = mask & ~is_special
                predicted = mask[:, 1:] & ~is_special[:, :-1]
                targets = ids[:, 1:]

                def forward(replace):
                    splice.replace, splice.keep = replace, act_mask
                    logits = model(input_ids=ids, attention_mask=mask.long(), use_cache=False).logits[:, :-1].float()
                    return logits.log_softmax(dim=-1)

                def ce(logp):
                    return float(-logp.gather(-1, targets[..., None])[..., 0][predicted].double().sum())

                def kl(logp, clean):
                    return float((clean.exp() * (clean - logp)).sum(-1)[predicted].double().sum())

                clean = forward(None)
                x = splice.captured.float()[act_mask]
                base["ce_clean"] += ce(clean)
                base["n_pred"] += int(predicted.sum())
                base["n_act"] += x.shape[0]
                base["x"] = base["x"] + x.double().sum(0)
                base["x2"] += float((x.double() ** 2).sum())
                if with_ablation:
                    zero = forward(torch.zeros_like)
                    base["ce_zero"] += ce(zero)
                    base["kl_zero"] += kl(zero, clean)
                for name, (encode, decode) in saes.items():
                    s = sums[name]
                    f = encode(x)
                    s["res"] += float(((x - decode(f)) ** 2).double().sum())
                    s["l0"] += float((f > 0).sum())
                    fired = (f > 0).any(0)
                    s["fired"] = fired if s["fired"] is None else s["fired"] | fired
                    logp = forward(lambda h, e=encode, d=decode: d(e(h)))
                    s["ce"] += ce(logp)
                    s["kl"] += kl(logp, clean)
    finally:
        splice.handle.remove()

    n, n_act = base["n_pred"], base["n_act"]
    total_var = base["x2"] - float((base["x"] ** 2).sum()) / n_act
    clean, zero, kl_zero = base["ce_clean"] / n, base["ce_zero"] / n, base["kl_zero"] / n
    out = {"_": {"ce_loss_clean": clean, "ce_loss_zero_ablation": zero if with_ablation else None,
                 "kl_div_with_ablation": kl_zero if with_ablation else None, "predicted_tokens": n, "activation_rows": n_act}}
    for name, s in sums.items():
        with_sae, kl_sae = s["ce"] / n, s["kl"] / n
        out[name] = {"ev": 1 - s["res"] / total_var, "l0": s["l0"] / n_act, "ce_loss_with_sae": with_sae,
                     "ce_loss_recovered": (zero - with_sae) / (zero - clean) if with_ablation else None,
                     "kl_div_with_sae": kl_sae, "kl_div_score": (kl_zero - kl_sae) / kl_zero if with_ablation else None,
                     "dead": int((~s["fired"]).sum())}
    return out


def app_heldout_texts(texts: list[str], sequence_starts: list[int], training_tokens: int) -> list[str]:
    """The corpus lines our run evaluated: those whose first activation row is at or after the
    held-out boundary (engine/run/evaluation.py: rows are stored in corpus order)."""
    return [text for text, start in zip(texts, sequence_starts) if start >= training_tokens]


def app_training_texts(texts: list[str], sequence_starts: list[int], training_tokens: int) -> list[str]:
    """The corpus lines whose rows all lie before the held-out boundary: SAELens' dataset."""
    ends = sequence_starts[1:] + [math.inf]
    return [text for text, end in zip(texts, ends) if end <= training_tokens]


def splice_convention(args, result: dict) -> str:
    if args.splice_convention != "auto":
        return args.splice_convention
    # The job's prepend_bos field (new): wherever the result document echoes it. Absent: the
    # evaluation before it, the tokenizer's own ids (SmolLM2's adds no BOS), splice everywhere.
    for where in (result, result.get("config") or {}, result.get("training_stats") or {}):
        if "prepend_bos" in where:
            return "special" if where["prepend_bos"] else "plain"
    return "plain"


