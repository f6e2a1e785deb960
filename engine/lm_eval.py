"""Next-token loss of a causal LM with an SAE spliced in at one hook point of one layer.

The standard downstream check of an SAE (SAELens' evals; Bricken et al. 2023): the LM's
cross-entropy clean, with the hook point's value (engine.hooks: block L's output, its input, its
attention's or MLP's output) replaced by the SAE's reconstruction, and with it zero-ablated;
`ce_loss_recovered` = (zero − sae) / (zero − clean), 1 being perfect, or None with
`ce_loss_reason` saying why when zero-ablation leaves the loss where it was.

The sequences are the ones extraction feeds the model (engine.sequences: the BOS put in front
exactly as there). With exclude_special_tokens, as in SAELens' get_recons_loss:
- no splice at a special token's position: the original value stays there, for the SAE and for
  the zero-ablation alike (SAELens keeps it for the SAE and zeroes every position when ablating;
  keeping it in both compares the SAE with an ablation of the same positions it replaces, and
  ablating the BOS, an attention sink, would inflate the recovered share);
- no loss on a prediction made from a special token's position (the prediction at the BOS of the
  first text token): `ce_eval_tokens` counts the predictions that are measured.

Beside it, as SAELens names them: `kl_div_with_sae` and `kl_div_with_ablation`, the mean over the
measured predictions of KL(clean || spliced) between the next-token distributions, in nats, and
`kl_div_score` = (ablation − sae) / ablation, 1 being perfect.

A transcoder reads one point and writes another (`read_point`: mlp_in, `hook_point`: mlp_out):
the MLP's output is replaced by the transcoder's prediction from the MLP's input of the same
forward, and the baseline zero-ablates the MLP's output.
"""
from collections.abc import Callable

from engine.errors import EngineError
from engine.hooks import DEFAULT_HOOK_POINT, register_reader, register_writer
from engine.loading import LoadedModel
from engine.model_info import is_causal_lm
from engine.sequences import Sequences, encode

# Below this change of mean loss (nats per predicted token) from zero-ablating the layer, the
# recovered fraction divides by ~0 and means nothing.
MIN_ABLATION_EFFECT = 1e-9
# Held-out tokens measured at most (about: whole sequences are kept until it is reached).
DEFAULT_MAX_TOKENS = 20_000


def ce_loss_evaluation(
    loaded: LoadedModel,
    texts: list[str],
    *,
    layer_number: int,
    reconstruct: Callable,  # raw activations [..., d] -> reconstruction [..., d], on loaded.device
    max_sequence_length: int,
    batch_size: int,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    hook_point: str = DEFAULT_HOOK_POINT,
    prepend_bos: bool = True,
    exclude_special_tokens: bool = True,
    read_point: str | None = None,
) -> dict:
    """`read_point`: where `reconstruct` reads (a transcoder's input), when not `hook_point`."""
    import torch

    if getattr(loaded.model, "get_output_embeddings", lambda: None)() is None:
        raise EngineError("The model was loaded without its LM head: load it with with_lm_head=True")
    kept = _sequences(loaded, texts, max_sequence_length=max_sequence_length, max_tokens=max_tokens,
                      prepend_bos=prepend_bos, exclude_special_tokens=exclude_special_tokens)

    # rows: the batch's positions that are rows [batch, positions]; read: read_point's value this forward
    mode = {"value": "clean", "rows": None, "read": None}

    def keep_input(hidden):
        mode["read"] = hidden

    def splice(hidden):
        if mode["value"] == "clean":
            return None
        if mode["value"] == "sae":
            source = hidden if read_point is None else mode["read"]
            replaced = reconstruct(source.float()).to(hidden.dtype)
        else:
            replaced = torch.zeros_like(hidden)
        # Special tokens' positions keep their value (see the module's docstring).
        return torch.where(mode["rows"][..., None], replaced, hidden)

    totals = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    kl_totals = {"sae": 0.0, "zero": 0.0}
    n_predicted = 0
    block = loaded.blocks[layer_number]
    handles = [register_writer(block, hook_point, splice)]
    if read_point is not None:
        handles.append(register_reader(block, read_point, keep_input))
    pad_id = loaded.tokenizer.pad_token_id
    try:
        with torch.inference_mode():
            for start in range(0, len(kept), batch_size):
                batch = kept[start : start + batch_size]
                input_ids, mask = _padded([ids for ids, _ in batch], pad_id, loaded.device)
                mode["rows"] = _padded_rows([rows for _, rows in batch], input_ids.shape, loaded.device)
                targets = input_ids[:, 1:]
                # A prediction is measured where there is a next token and it is made from a row.
                predicted = mask[:, 1:].bool() & mode["rows"][:, :-1]
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
        for handle in handles:
            handle.remove()

    return {**_summary(totals, n_predicted, layer_number), **_kl_summary(kl_totals, n_predicted, layer_number)}


def _sequences(loaded, texts, *, max_sequence_length: int, max_tokens: int, prepend_bos: bool,
               exclude_special_tokens: bool) -> list:
    """(token ids, which positions are rows) of the held-out sequences with a prediction to
    measure (a row followed by a token), up to about max_tokens tokens of them. `texts` may be
    sequences packed already (engine.packing), as a run's are."""
    if isinstance(texts, Sequences):
        sequences = texts
    else:
        sequences = encode(loaded.tokenizer, texts, max_sequence_length=max_sequence_length,
                           causal=is_causal_lm(loaded.config), prepend_bos=prepend_bos,
                           exclude_special_tokens=exclude_special_tokens)
    kept, budget = [], max_tokens
    for ids, rows in zip(sequences.ids, sequences.keep):
        if len(ids) < 2 or not rows[:-1].any():
            continue
        if budget <= 0:
            break
        kept.append((ids, rows))
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


def _padded_rows(rows: list, shape, device):
    import torch

    padded = torch.zeros(shape, dtype=torch.bool)
    for row, kept in enumerate(rows):
        padded[row, : len(kept)] = torch.from_numpy(kept)
    return padded.to(device)


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
