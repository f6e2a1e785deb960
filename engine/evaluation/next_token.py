"""Next-token loss of a causal LM with an SAE spliced in at one hook point of one layer.

The standard downstream check of an SAE (SAELens' evals; Bricken et al. 2023): the LM's
cross-entropy clean, with the hook point's value (engine.models.hooks: block L's output, its input, its
attention's or MLP's output) replaced by the SAE's reconstruction, and with it zero-ablated;
`ce_loss_recovered` = (zero − sae) / (zero − clean), 1 being perfect, or None with
`ce_loss_reason` saying why when zero-ablation leaves the loss where it was.

The sequences are the ones extraction feeds the model (engine.text.sequences: the BOS put in front
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

An SAE that reads one point and predicts another (`read_point`, `hook_point`; a transcoder: mlp_in
and mlp_out) has the point it predicts replaced by its prediction from the point it reads in the
same forward, and the baseline zero-ablates the predicted point.
"""
from collections.abc import Callable

from engine.defaults import EVAL_DEFAULTS
from engine.errors import EngineError
from engine.models.hooks import DEFAULT_HOOK_POINT, register_reader, register_writer
from engine.models.loading import LoadedModel
from engine.models.info import is_causal_lm
from engine.text.sequences import Sequences, encode


class HeadNotSupported(EngineError):
    """The model computes its logits in a way the bounded-memory evaluation cannot repeat."""


# Below this change of mean loss (nats per predicted token) from zero-ablating the layer, the
# recovered fraction divides by ~0 and means nothing.
MIN_ABLATION_EFFECT = 1e-9
# Held-out tokens measured at most (about: whole sequences are kept until it is reached), as
# SAELens' n_eval_batches caps its own.
DEFAULT_MAX_TOKENS = EVAL_DEFAULTS.ce_max_tokens
# The [tokens x vocabulary] float32 tensors alive at once (logits, log-probabilities, the KL's
# terms), at most: the LM head runs on this many predictions at a time, whatever the batch and the
# vocabulary (a 128k vocabulary over a 16 x 512 batch would be 4 GB a tensor).
DEFAULT_LOGITS_BYTES = EVAL_DEFAULTS.logits_bytes
# How many [chunk x vocabulary] float32 tensors one chunk holds at its peak: the clean
# log-probabilities and probabilities, a spliced variant's logits and its log-probabilities.
_LIVE_LOGITS = 4
# The head's logits recomputed from its captured input must match the model's own this closely
# (relative to the logits' scale), or the model post-processes its logits in a way not known here.
_HEAD_TOLERANCE = 1e-3


def logits_chunk_tokens(vocab_size: int, logits_bytes: int) -> int:
    """Predictions measured per LM-head call so the live logits stay within `logits_bytes`; 0 when
    not even one fits (the run must lower nothing else: raise the budget)."""
    return int(logits_bytes) // (_LIVE_LOGITS * 4 * max(int(vocab_size), 1))


def ce_loss_evaluation(
    loaded: LoadedModel,
    texts: list[str],
    *,
    layer_number: int,
    reconstruct: Callable,  # raw activations [..., d] -> reconstruction [..., d], on loaded.device
    max_sequence_length: int,
    batch_size: int,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    logits_bytes: int = DEFAULT_LOGITS_BYTES,
    hook_point: str = DEFAULT_HOOK_POINT,
    prepend_bos: bool = True,
    exclude_special_tokens: bool = True,
    read_point: str | None = None,
) -> dict:
    """`read_point`: where `reconstruct` reads (its input), when not `hook_point`.

    Memory: the model runs a batch as extraction does, but its LM head only on the last position
    (its input, the final hidden states [batch, positions, d_model], is kept for the three
    variants); the logits of the measured predictions are then computed, log-softmaxed and
    compared `logits_chunk_tokens(vocab, logits_bytes)` predictions at a time, and only sums are
    accumulated."""
    import torch

    head = _Head(loaded)
    chunk = logits_chunk_tokens(head.vocab_size, logits_bytes)
    if chunk < 1:
        raise EngineError(
            f"eval_logits_bytes {logits_bytes:,} holds no prediction's logits over a vocabulary of {head.vocab_size:,} "
            f"tokens: raise it to at least {_LIVE_LOGITS * 4 * head.vocab_size:,}")
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
        with torch.inference_mode(), head:
            for start in range(0, len(kept), batch_size):
                batch = kept[start : start + batch_size]
                input_ids, mask = _padded([ids for ids, _ in batch], pad_id, loaded.device)
                mode["rows"] = _padded_rows([rows for _, rows in batch], input_ids.shape, loaded.device)
                # A prediction is measured where there is a next token and it is made from a row.
                predicted = mask[:, 1:].bool() & mode["rows"][:, :-1]
                targets = input_ids[:, 1:][predicted]
                n_predicted += int(predicted.sum())
                hidden = {}  # the head's input at the measured predictions [n, d_model], per variant
                for name in totals:
                    mode["value"] = name
                    hidden[name] = head.hidden_states(input_ids, mask)[:, :-1][predicted]
                for lo in range(0, len(targets), chunk):
                    rows, wanted = slice(lo, lo + chunk), targets[lo : lo + chunk, None]
                    _measure_chunk({name: h[rows] for name, h in hidden.items()}, wanted, head, totals, kl_totals)
    finally:
        for handle in handles:
            handle.remove()

    return {**_summary(totals, n_predicted, layer_number), **_kl_summary(kl_totals, n_predicted, layer_number)}


def _measure_chunk(hidden: dict, wanted, head: "_Head", totals: dict, kl_totals: dict) -> None:
    """Adds one chunk of predictions' losses and KLs to the totals. KL(clean || spliced) is
    sum p_clean (log p_clean - log p_spliced), the difference taken in place and summed against
    p_clean by a matrix product: no tensor of terms beside the log-probabilities."""
    import torch

    # clean first: the spliced distributions are compared with it
    clean = torch.log_softmax(head.logits(hidden["clean"]), dim=-1)
    totals["clean"] += float(-clean.gather(1, wanted).double().sum())
    probs = clean.exp()
    for name in kl_totals:
        log_probs = torch.log_softmax(head.logits(hidden[name]), dim=-1)
        totals[name] += float(-log_probs.gather(1, wanted).double().sum())
        difference = log_probs.neg_().add_(clean)  # log p_clean - log p_spliced, in place
        kl_totals[name] += float(torch.bmm(probs[:, None, :], difference[:, :, None]).double().sum())
        del log_probs, difference


class _Head:
    """The LM head, run apart from the model's forward. Inside `with`, a forward computes the head
    on its last position only (the model's own logits for it, kept to check against) and keeps the
    head's whole input; `logits(h)` computes the head, and the model's known post-processing
    (Gemma's final soft-capping, Cohere's logit scale, Granite's logit divisor), on any rows of it.
    Checked on every forward against the model's own logits, so a model that post-processes them
    in some other way is refused rather than measured wrong."""

    def __init__(self, loaded: LoadedModel):
        lm = loaded.model
        self.model = lm
        self.output = getattr(lm, "get_output_embeddings", lambda: None)()
        if self.output is None:
            raise EngineError("The model was loaded without its LM head: load it with with_lm_head=True")
        weight = getattr(self.output, "weight", None)
        self.vocab_size = int(weight.shape[0]) if weight is not None else int(getattr(loaded.config, "vocab_size", 0))
        config = loaded.config
        text_config = getattr(config, "get_text_config", lambda: config)()
        self.softcap = getattr(text_config, "final_logit_softcapping", None)
        self.scale = getattr(lm, "logit_scale", None) if isinstance(getattr(lm, "logit_scale", None), (int, float)) else None
        self.divisor = getattr(text_config, "logits_scaling", None)
        self.captured = None
        self._handle = None

    def __enter__(self):
        def keep_and_cut(_module, args):
            hidden = args[0]
            self.captured = hidden
            return (hidden[..., -1:, :], *args[1:])

        self._handle = self.output.register_forward_pre_hook(keep_and_cut)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        self.captured = None
        return False

    def hidden_states(self, input_ids, mask):
        """The head's input for every position [batch, positions, d_model], after checking the
        head run here against the model's own logits at the last position."""
        self.captured = None
        own = self.model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
        hidden = self.captured
        if hidden is None or hidden.shape[:2] != input_ids.shape:
            raise HeadNotSupported(f"{type(self.model).__name__} does not run its output embedding on its final hidden "
                                   "states: next-token loss cannot be measured in bounded memory for it")
        ours, theirs = self.logits(hidden[:, -1]), own[:, -1].float()
        scale = float(theirs.abs().max()) or 1.0
        if float((ours - theirs).abs().max()) > _HEAD_TOLERANCE * scale:
            raise HeadNotSupported(f"{type(self.model).__name__} post-processes its logits in a way miStudio does not "
                                   "know: next-token loss cannot be measured in bounded memory for it")
        return hidden

    def logits(self, hidden):
        """float32 logits [n, vocabulary] of head inputs [n, d_model]."""
        import torch

        logits = self.output(hidden) if self._handle is None else self._unhooked(hidden)
        logits = logits.float()
        if self.scale is not None:
            logits = logits * self.scale
        if self.divisor:
            logits = logits / self.divisor
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def _unhooked(self, hidden):
        # The pre-hook cuts to the last position; a direct call of the module's forward skips it.
        return self.output.forward(hidden)


def _sequences(loaded, texts, *, max_sequence_length: int, max_tokens: int, prepend_bos: bool,
               exclude_special_tokens: bool) -> list:
    """(token ids, which positions are rows) of the held-out sequences with a prediction to
    measure (a row followed by a token), up to about max_tokens tokens of them. `texts` may be
    sequences packed already (engine.text.packing), as a run's are."""
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
