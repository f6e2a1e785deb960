"""A run's evaluation: metrics on the held-out tail of the activations, which training never saw;
for causal LMs, next-token loss on the held-out sequences with the SAE spliced in."""
import numpy as np

from engine.evaluation.reconstruction import evaluate_sae
from engine.finite import json_ready
from engine.run import verdict
from engine.text.sequences import Sequences

_NO_CE_LOSS = {"ce_loss_clean": None, "ce_loss_with_sae": None, "ce_loss_zero_ablation": None,
               "ce_loss_recovered": None, "kl_div_with_sae": None, "kl_div_with_ablation": None,
               "kl_div_score": None}


def evaluate(spec, result, final, *, model_name, loaded, heldout_sequences_from=None) -> tuple[dict, object]:
    """(the evaluation, each feature's firing density for the SAELens export, or None).
    `final`: the rows read after training (engine.run.final_rows), whose rows from `eval_first`
    on are measured; `loaded`: the causal LM (None when there is none);
    `heldout_sequences_from(row, max_rows)`: (the sequences from the one holding `row`, the row the
    first starts at), for the next-token metrics. An SAE given targets is scored on them (a
    transcoder: the FVU of the MLP's output)."""
    start, stop = final.eval_first, final.n_rows
    evaluation = evaluate_sae(
        result.sae, final.rows_from(start),
        scaling_factor=result.scaling_factor, device=spec.device,
        batch_tokens=spec.config.sae_batch_tokens, dead_counts=result.tokens_since_fired,
        dead_window_tokens=result.dead_window_tokens,
        targets=final.targets_from(start), target_scaling_factor=result.target_scaling_factor,
    )
    if start > final.heldout_start:
        evaluation["eval_tokens_reason"] = (
            f"the last {stop - start:,} of {stop - final.heldout_start:,} held-out tokens were measured "
            "(the evaluation's max_rows: MISTUDIO_EVAL_MAX_TOKENS)")
    feature_density = evaluation.pop("feature_density", None)
    if spec.activations_file is not None:
        ce = {**_NO_CE_LOSS, "ce_loss_reason": "trained from an activations file: there is no language model to splice the SAE into"}
    elif loaded is None:
        ce = {**_NO_CE_LOSS, "ce_loss_reason": f"{model_name} is not a causal language model: next-token loss does not apply"}
    else:
        # The sequences the measured tokens come from, as many as the next-token metrics measure.
        sequences, first_row = heldout_sequences_from(start, spec.evaluation.ce_max_tokens)
        ce = _ce_loss(spec, result, loaded=loaded, heldout=heldout_sequences(sequences, first_row, start))
    evaluation.update(ce)
    evaluation["warnings"] = verdict.warnings(evaluation, spec.config)
    return json_ready(evaluation, _unmeasured(evaluation["eval_tokens"])), feature_density


def _unmeasured(eval_tokens: int) -> dict[str, str]:
    """Why a held-out metric is null, where it is (engine.finite)."""
    flat = (f"the {eval_tokens} held-out token(s) do not vary, so there is no variance to explain: train on more "
            "tokens (5% of them are held out)")
    none = "no tokens were held out to measure it on"
    return {"explained_variance": flat, "prefix_explained_variance": flat, "mse": none, "cosine_similarity": none}


def _ce_loss(spec, result, *, loaded, heldout: Sequences) -> dict:
    from engine.evaluation.next_token import HeadNotSupported, ce_loss_evaluation

    from engine.run.sources import run_sites

    sae, s = result.sae.to(spec.device).eval(), result.scaling_factor
    s_out = s if result.target_scaling_factor is None else result.target_scaling_factor

    def reconstruct(x):
        return sae(x * s).output / s_out

    # Paired sites: the prediction from the input site replaces the target site in the same forward.
    sites = run_sites(spec)
    read_point = sites.input if sites.paired else None
    # Its ce_loss_reason says why ce_loss_recovered is None, when it is.
    try:
        return ce_loss_evaluation(loaded, heldout, layer_number=spec.layer_number, reconstruct=reconstruct,
                                  max_sequence_length=spec.max_sequence_length, batch_size=spec.batch_size,
                                  max_tokens=spec.evaluation.ce_max_tokens, logits_bytes=spec.evaluation.logits_bytes,
                                  hook_point=spec.hook_point, prepend_bos=spec.prepend_bos,
                                  exclude_special_tokens=spec.exclude_special_tokens, read_point=read_point)
    except HeadNotSupported as err:  # the SAE is trained: its other metrics stand
        return {**_NO_CE_LOSS, "ce_loss_reason": str(err), "kl_div_reason": str(err)}


def heldout_sequences(sequences: Sequences, first_row: int, heldout_start: int) -> Sequences:
    """The sequences whose rows all lie in the held-out tail (rows are stored in corpus order;
    `sequences` start at row `first_row`). When the tail is shorter than the last sequence, that
    sequence alone: its later rows are held out, its first ones were trained on."""
    rows = sequences.rows
    starts = first_row + (np.concatenate([[0], np.cumsum(rows)[:-1]]) if len(rows) else np.zeros(0, dtype=np.int64))
    whole = [i for i, (start, n) in enumerate(zip(starts, rows)) if start >= heldout_start and n > 0]
    if not whole:
        whole = [i for i, (start, n) in enumerate(zip(starts, rows)) if start < heldout_start < start + n][-1:]
    return Sequences(ids=[sequences.ids[i] for i in whole], keep=[sequences.keep[i] for i in whole],
                     prepend_bos=sequences.prepend_bos)
