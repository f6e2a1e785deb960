"""A run's feature analysis (engine.evaluation.features): top contexts, statistics and histograms of every
feature in one pass over the run's activations, for causal LMs the logit effect, and the text of
every token the analysis shows (tokens.json)."""
import json
import logging
import time

import numpy as np

from engine.files import AtomicFile
from engine.evaluation.stats import statistics_from_analysis
from engine.text.tokens import token_texts

logger = logging.getLogger(__name__)


def analyze(spec, result, final, *, model, loaded, on_progress=None, should_stop=None):
    """(what the outcome says of the analysis, the feature_statistics from its counts); the
    analysis is saved to spec.paths.features_dir. `final`: the rows read after training
    (engine.run.final_rows), whose rows from `analysis_first` on are analysed; `model`: the
    ResolvedModel (None for an activations file); `loaded`: the causal LM, or None. Raises
    AnalysisCancelled."""
    from engine.evaluation.features import analyze_features, save_analysis

    started = time.monotonic()
    first = final.analysis_first
    token_ids, starts = final.tokens_from(first)
    sae = result.sae.to(spec.device).eval()
    analysis = analyze_features(
        sae, result.scaling_factor, final.rows_from(first), token_ids=token_ids, sequence_starts=starts,
        top_n=spec.features.top_n, window=spec.features.window, chunk_rows=max(256, spec.config.sae_batch_tokens),
        device=spec.device, on_progress=on_progress, should_stop=should_stop, first_row=first,
    )
    info = {"top_n": analysis.top_n, "window": analysis.window, "analyzed_tokens": analysis.n_rows,
            "contexts": token_ids is not None, "logit_effect": False, "logit_effect_reason": None,
            "seconds": None}
    if first > 0:
        info["analyzed_tokens_reason"] = (
            f"the last {analysis.n_rows:,} of the run's {final.n_rows:,} tokens were analysed (MISTUDIO_ANALYSIS_TOKENS)")
    if token_ids is None:
        info["contexts_reason"] = ("trained from an activations file: there are no tokens" if spec.activations_file is not None
                                   else "the activations were extracted before token indexes were kept")
    # The logit effect reads W_dec, which writes in the output's units (an SAE given targets: their scale).
    output_scale = result.scaling_factor if result.target_scaling_factor is None else result.target_scaling_factor
    info["logit_effect_reason"] = _add_logit_effects(analysis, sae, output_scale, spec, model, loaded)
    info["logit_effect"] = info["logit_effect_reason"] is None
    folder = spec.paths.features_dir
    save_analysis(analysis, folder)
    tokenizer = _tokenizer(spec, model, loaded)
    if tokenizer is not None:
        _write_token_texts(analysis, tokenizer, folder)
    info["seconds"] = round(time.monotonic() - started, 3)
    return info, statistics_from_analysis(analysis)


def _add_logit_effects(analysis, sae, scaling_factor, spec, model, loaded) -> str | None:
    """Fills the analysis' logit arrays; returns why not, or None when it did."""
    from engine.evaluation.features import logit_effects

    if spec.activations_file is not None:
        return "trained from an activations file: there is no unembedding"
    if loaded is None:
        return f"{model.name} is not a causal language model: it has no unembedding to read tokens through"
    lm = loaded.model
    output = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if output is None or getattr(output, "weight", None) is None:
        return f"{model.name} exposes no output embedding"
    base = getattr(lm, "base_model", lm)
    norm = next((getattr(base, name) for name in ("norm", "ln_f", "final_layernorm", "final_layer_norm")
                 if getattr(base, name, None) is not None), None)
    norm_weight = getattr(norm, "weight", None)
    try:
        unembedding = output.weight.detach().float()
    except (RuntimeError, TypeError) as err:  # a quantized head that cannot be dequantized this way
        return f"the output embedding could not be read as floats: {err}"
    top_ids, top_values, bottom_ids, bottom_values = logit_effects(
        sae, scaling_factor, unembedding, norm_weight=None if norm_weight is None else norm_weight.detach().float(),
        n=spec.features.logit_tokens,
    )
    analysis.logit_top_ids, analysis.logit_top_values = top_ids, top_values
    analysis.logit_bottom_ids, analysis.logit_bottom_values = bottom_ids, bottom_values
    return None


def _tokenizer(spec, model, loaded):
    if loaded is not None:
        return loaded.tokenizer
    if spec.activations_file is not None or model is None or not model.location:
        return None
    from engine.models.loading import load_tokenizer

    try:
        return load_tokenizer(model, token=spec.token, models_cache_dir=spec.models_cache_dir)
    except (OSError, ValueError) as err:
        logger.warning("run %s: no tokenizer for feature contexts: %s", spec.run_id or spec.checkpoint_prefix, err)
        return None


def _write_token_texts(analysis, tokenizer, folder) -> None:
    """tokens.json: the text of every token a context window or a logit list shows."""
    used = set()
    for array in (analysis.window_tokens, analysis.logit_top_ids, analysis.logit_bottom_ids):
        if array is not None:
            used.update(int(t) for t in np.unique(np.asarray(array)) if t >= 0)
    strings = {str(t): text for t, text in token_texts(tokenizer, sorted(used)).items()}
    with AtomicFile(folder / "tokens.json") as partial:
        partial.write_text(json.dumps(strings, ensure_ascii=False), encoding="utf-8")
