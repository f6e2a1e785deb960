"""A run's evaluation: metrics on the held-out tail of the activations, which training never saw;
for causal LMs, next-token loss on the held-out sequences with the SAE spliced in."""
import numpy as np

from engine.evaluate import evaluate_sae

_NO_CE_LOSS = {"ce_loss_clean": None, "ce_loss_with_sae": None, "ce_loss_zero_ablation": None,
               "ce_loss_recovered": None, "kl_div_with_sae": None, "kl_div_with_ablation": None,
               "kl_div_score": None}


def evaluate(spec, result, activations, *, model_name, loaded, texts) -> tuple[dict, object]:
    """(the evaluation, each feature's firing density for the SAELens export, or None).
    `loaded` and `texts`: the causal LM and its corpus; None when there is none."""
    start, stop = result.heldout_rows or (0, int(activations.shape[0]))
    evaluation = evaluate_sae(
        result.sae, activations[start:stop], scaling_factor=result.scaling_factor, device=spec.device,
        batch_tokens=spec.config.sae_batch_tokens, dead_counts=result.tokens_since_fired,
        dead_window_tokens=result.dead_window_tokens,
    )
    feature_density = evaluation.pop("feature_density", None)
    evaluation.update(_ce_loss(spec, result, model_name=model_name, loaded=loaded, texts=texts, heldout_start=start))
    return evaluation, feature_density


def _ce_loss(spec, result, *, model_name, loaded, texts, heldout_start) -> dict:
    if spec.activations_file is not None:
        return {**_NO_CE_LOSS, "ce_loss_reason": "trained from an activations file: there is no language model to splice the SAE into"}
    if loaded is None:
        return {**_NO_CE_LOSS, "ce_loss_reason": f"{model_name} is not a causal language model: next-token loss does not apply"}
    from engine.lm_eval import ce_loss_evaluation

    from engine.model_info import is_causal_lm
    from engine.sequences import encode

    # The held-out rows are the corpus's last sequences (rows are stored in corpus order).
    lengths = encode(loaded.tokenizer, texts, max_sequence_length=spec.max_sequence_length,
                     causal=is_causal_lm(loaded.config), prepend_bos=spec.prepend_bos,
                     exclude_special_tokens=spec.exclude_special_tokens).rows
    heldout_texts = _heldout_texts(texts, lengths, heldout_start)
    sae, s = result.sae.to(spec.device).eval(), result.scaling_factor

    def reconstruct(x):
        return sae.decode(sae.encode(x * s)) / s

    # Its ce_loss_reason says why ce_loss_recovered is None, when it is.
    return ce_loss_evaluation(loaded, heldout_texts, layer_number=spec.layer_number, reconstruct=reconstruct,
                              max_sequence_length=spec.max_sequence_length, batch_size=spec.batch_size,
                              hook_point=spec.hook_point, prepend_bos=spec.prepend_bos,
                              exclude_special_tokens=spec.exclude_special_tokens)


def _heldout_texts(texts, rows, heldout_start: int) -> list:
    """The texts whose rows all lie in the held-out tail. When the tail is shorter than the last
    text, that text alone: its later rows are held out, its first ones were trained on."""
    starts = np.concatenate([[0], np.cumsum(rows)[:-1]]) if len(rows) else np.zeros(0, dtype=np.int64)
    whole = [text for text, start, n in zip(texts, starts, rows) if start >= heldout_start and n > 0]
    if whole:
        return whole
    straddling = [text for text, start, n in zip(texts, starts, rows) if start < heldout_start < start + n]
    return straddling[-1:]
