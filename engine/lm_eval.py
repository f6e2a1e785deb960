"""Next-token loss of a causal LM with an SAE spliced in at one layer.

The standard downstream check of an SAE (SAELens' evals; Bricken et al. 2023): the LM's
cross-entropy clean, with the layer's output replaced by the SAE's reconstruction, and with the
layer's output zero-ablated; `ce_loss_recovered` = (zero − sae) / (zero − clean), 1 being perfect,
or None with `ce_loss_reason` saying why when zero-ablation leaves the loss where it was.

Beside it, as SAELens names them: `kl_div_with_sae` and `kl_div_with_ablation`, the mean over
predicted tokens of KL(clean || spliced) between the next-token distributions, in nats, and
`kl_div_score` = (ablation − sae) / ablation, 1 being perfect.
"""
from collections.abc import Callable

from engine.errors import EngineError
from engine.loading import LoadedModel

# Below this change of mean loss (nats per predicted token) from zero-ablating the layer, the
# recovered fraction divides by ~0 and means nothing.
MIN_ABLATION_EFFECT = 1e-9


def ce_loss_evaluation(
    loaded: LoadedModel,
    texts: list[str],
    *,
    layer_number: int,
    reconstruct: Callable,  # raw activations [..., d] -> reconstruction [..., d], on loaded.device
    max_sequence_length: int,
    batch_size: int,
    max_tokens: int = 20_000,
) -> dict:
    import torch

    if getattr(loaded.model, "get_output_embeddings", lambda: None)() is None:
        raise EngineError("The model was loaded without its LM head: load it with with_lm_head=True")
    kept = _sequences(loaded, texts, max_sequence_length=max_sequence_length, max_tokens=max_tokens)

    mode = {"value": "clean"}

    def splice(_module, _inputs, output):
        if mode["value"] == "clean":
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        if mode["value"] == "sae":
            replaced = reconstruct(hidden.float()).to(hidden.dtype)
        else:
            replaced = torch.zeros_like(hidden)
        return (replaced, *output[1:]) if isinstance(output, tuple) else replaced

    totals = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    kl_totals = {"sae": 0.0, "zero": 0.0}
    n_predicted = 0
    handle = loaded.blocks[layer_number].register_forward_hook(splice)
    pad_id = loaded.tokenizer.pad_token_id
    try:
        with torch.inference_mode():
            for start in range(0, len(kept), batch_size):
                input_ids, mask = _padded(kept[start : start + batch_size], pad_id, loaded.device)
                targets = input_ids[:, 1:]
                predicted = mask[:, 1:].bool()
                n_predicted += int(predicted.sum())
                for name in totals:  # clean first: the spliced distributions are compared with it
                    mode["value"] = name
                    logits = loaded.model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
                    log_probs = torch.log_softmax(logits[:, :-1][predicted].float(), dim=-1)
                    totals[name] += float(-log_probs.gather(1, targets[predicted][:, None]).double().sum())
                    if name == "clean":
                        clean_log_probs = log_probs
                    else:
                        kl = torch.nn.functional.kl_div(log_probs, clean_log_probs, log_target=True, reduction="none")
                        kl_totals[name] += float(kl.sum(dim=-1).double().sum())
    finally:
        handle.remove()

    return {**_summary(totals, n_predicted, layer_number), **_kl_summary(kl_totals, n_predicted, layer_number)}


def _sequences(loaded, texts, *, max_sequence_length: int, max_tokens: int) -> list[list[int]]:
    """The held-out sequences of two or more tokens, up to about max_tokens of them."""
    encoded = loaded.tokenizer(list(texts), truncation=True, max_length=max_sequence_length, padding=False)
    kept, budget = [], max_tokens
    for ids in (ids for ids in encoded["input_ids"] if len(ids) >= 2):
        if budget <= 0:
            break
        kept.append(ids)
        budget -= len(ids)
    if not kept:
        raise EngineError("No held-out sequence has two or more tokens to measure next-token loss on")
    return kept


def _padded(batch: list[list[int]], pad_id, device):
    import torch

    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
    return input_ids.to(device), mask.to(device)


def _summary(totals: dict, n_predicted: int, layer_number: int) -> dict:
    clean, with_sae, zero = (totals[k] / n_predicted for k in ("clean", "sae", "zero"))
    denominator = zero - clean
    # Undefined when ablating the layer costs nothing: say so rather than divide by ~0.
    defined = abs(denominator) > MIN_ABLATION_EFFECT
    return {
        "ce_loss_clean": clean,
        "ce_loss_with_sae": with_sae,
        "ce_loss_zero_ablation": zero,
        "ce_loss_recovered": (zero - with_sae) / denominator if defined else None,
        "ce_loss_reason": None if defined else (
            f"zero-ablating layer {layer_number} changes the loss by less than {MIN_ABLATION_EFFECT:g} nats per "
            "token: recovery is undefined"
        ),
        "ce_eval_tokens": n_predicted,
    }


def _kl_summary(kl_totals: dict, n_predicted: int, layer_number: int) -> dict:
    with_sae, ablation = (kl_totals[k] / n_predicted for k in ("sae", "zero"))
    defined = ablation > MIN_ABLATION_EFFECT
    return {
        "kl_div_with_sae": with_sae,
        "kl_div_with_ablation": ablation,
        "kl_div_score": (ablation - with_sae) / ablation if defined else None,
        "kl_div_reason": None if defined else (
            f"zero-ablating layer {layer_number} moves the next-token distribution by less than "
            f"{MIN_ABLATION_EFFECT:g} nats: the KL score is undefined"
        ),
    }
