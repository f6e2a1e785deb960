"""A run's evaluation: metrics on the held-out tail of the activations, which training never saw;
for causal LMs, next-token loss on the held-out sequences with the SAE spliced in."""
import numpy as np

from engine.evaluate import evaluate_sae
from engine.finite import json_ready
from engine.run import verdict
from engine.sequences import Sequences
from engine.stream import ActivationStream

_NO_CE_LOSS = {"ce_loss_clean": None, "ce_loss_with_sae": None, "ce_loss_zero_ablation": None,
               "ce_loss_recovered": None, "kl_div_with_sae": None, "kl_div_with_ablation": None,
               "kl_div_score": None}


def evaluate(spec, result, activations, *, model_name, loaded, sequences, targets=None) -> tuple[dict, object]:
    """(the evaluation, each feature's firing density for the SAELens export, or None).
    `loaded`: the causal LM (None when there is none); `sequences`: the sequences the cached rows
    came from (engine.sequences.Sequences), None when the rows streamed (`activations` is then
    the ActivationStream, which computes the held-out tail again) or came from a file. `targets`:
    a transcoder's, which it is scored on (the FVU of the MLP's output)."""
    start, stop = result.heldout_rows or (0, int(activations.shape[0]))
    limit = spec.evaluation.max_rows
    measured_stop = stop if limit is None else min(stop, start + limit)
    streamed = isinstance(activations, ActivationStream)
    rows = _Window(activations.reader(start, measured_stop), start, measured_stop) if streamed else activations[start:measured_stop]
    evaluation = evaluate_sae(
        result.sae, rows,
        scaling_factor=result.scaling_factor, device=spec.device,
        batch_tokens=spec.config.sae_batch_tokens, dead_counts=result.tokens_since_fired,
        dead_window_tokens=result.dead_window_tokens,
        targets=None if targets is None else targets[start:measured_stop], target_scaling_factor=result.target_scaling_factor,
    )
    if measured_stop < stop:
        evaluation["eval_tokens_reason"] = (f"the first {measured_stop - start:,} of {stop - start:,} held-out tokens were "
                                            "measured (the evaluation's max_rows: MISTUDIO_EVAL_MAX_TOKENS)")
    feature_density = evaluation.pop("feature_density", None)
    if spec.activations_file is not None:
        ce = {**_NO_CE_LOSS, "ce_loss_reason": "trained from an activations file: there is no language model to splice the SAE into"}
    elif loaded is None:
        ce = {**_NO_CE_LOSS, "ce_loss_reason": f"{model_name} is not a causal language model: next-token loss does not apply"}
    else:
        # The sequences the measured tokens come from, as many as the next-token metrics measure.
        heldout = (activations.sequences_from(start, max_rows=spec.evaluation.ce_max_tokens) if streamed
                   else (sequences, 0))
        ce = _ce_loss(spec, result, loaded=loaded, heldout=heldout_sequences(*heldout, start))
    evaluation.update(ce)
    evaluation["warnings"] = verdict.warnings(evaluation, spec.config)
    return json_ready(evaluation, _unmeasured(evaluation["eval_tokens"])), feature_density


class _Window:
    """Rows [start, stop) of a streamed pass, sliced from 0 front to back as evaluate_sae reads
    them: only the slice being read is held, not the whole held-out tail."""

    def __init__(self, reader, start: int, stop: int):
        self.reader, self.start = reader, start
        self.shape = (stop - start, reader.shape[1])

    def __getitem__(self, rows: slice):
        lo, hi = self.start + rows.start, self.start + min(rows.stop, self.shape[0])
        return self.reader.read(lo, hi)


def _unmeasured(eval_tokens: int) -> dict[str, str]:
    """Why a held-out metric is null, where it is (engine.finite)."""
    flat = (f"the {eval_tokens} held-out token(s) do not vary, so there is no variance to explain: train on more "
            "tokens (5% of them are held out)")
    none = "no tokens were held out to measure it on"
    return {"explained_variance": flat, "prefix_explained_variance": flat, "mse": none, "cosine_similarity": none}


def _ce_loss(spec, result, *, loaded, heldout: Sequences) -> dict:
    from engine.lm_eval import HeadNotSupported, ce_loss_evaluation

    from engine.run.sources import is_transcoder, transcoder_sites

    sae, s = result.sae.to(spec.device).eval(), result.scaling_factor
    s_out = s if result.target_scaling_factor is None else result.target_scaling_factor

    def reconstruct(x):
        return sae(x * s)[0] / s_out

    # A transcoder's prediction from the MLP's input replaces the MLP's output in the same forward.
    read_point = next(iter(transcoder_sites(spec)))[1] if is_transcoder(spec) else None
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
