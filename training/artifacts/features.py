"""Reading a job's feature analysis (engine.evaluation.features, written by the pipeline into the job's
features folder) for the API and the pages: a paged, sortable, filterable list and one feature's
detail with its top contexts, activation histogram and logit effect."""
import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from engine.errors import EngineError
from mistudio.errors import Conflict, NotFound, ServiceError
from training.artifacts.retention import check_not_purged

SORTS = ("frequency", "max_activation", "mean_activation", "index")
FILTERS = ("all", "alive", "dead", "dense")
# A feature firing on more than this share of tokens is "dense" (the evaluation's definition).
DENSE_FRACTION = 0.1
TOKENS_FILE = "tokens.json"
MAX_PAGE_SIZE = 500


def _analysis(job):
    from engine.evaluation.features import load_analysis

    check_not_purged(job, "feature analysis")
    if not job.features_dir:
        if job.is_finished:
            raise Conflict(f"Job {job.id} has no feature analysis: it ended {job.status} before the analysis phase")
        raise Conflict(f"Job {job.id} is {job.status} ({job.phase}): its features appear when the analysis phase ends")
    try:
        return load_analysis(Path(job.features_dir), mmap=True)
    except EngineError as err:
        raise Conflict(f"The feature analysis of job {job.id} cannot be read: {err}") from None


@lru_cache(maxsize=8)
def _token_strings(folder: str, mtime: float) -> dict[int, str]:
    path = Path(folder) / TOKENS_FILE
    if not path.is_file():
        return {}
    return {int(k): v for k, v in json.loads(path.read_text(encoding="utf-8")).items()}


def _tokens(job) -> dict[int, str]:
    path = Path(job.features_dir) / TOKENS_FILE
    return _token_strings(job.features_dir, path.stat().st_mtime if path.exists() else 0.0)


def _summary(analysis, index: int) -> dict:
    frequency = float(analysis.frequency[index])
    return {
        "index": index,
        "frequency": frequency,
        "mean_activation": float(analysis.mean_activation[index]),
        "max_activation": float(analysis.max_activation[index]),
        "dead": frequency == 0.0,
        "dense": frequency > DENSE_FRACTION,
    }


def feature_list(job, *, sort="frequency", descending=True, filter="all", page=1, page_size=50, query="") -> dict:
    """query: features whose top-context peak tokens, or promoted tokens, contain this text
    (case-insensitive); a query that is a number also finds the feature with that index."""
    if sort not in SORTS:
        raise ServiceError(f"sort must be one of {', '.join(SORTS)}, not {sort!r}")
    if filter not in FILTERS:
        raise ServiceError(f"filter must be one of {', '.join(FILTERS)}, not {filter!r}")
    if page < 1 or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ServiceError(f"page must be at least 1 and page_size between 1 and {MAX_PAGE_SIZE}")
    analysis = _analysis(job)
    frequency = np.asarray(analysis.frequency)
    indices = np.arange(analysis.d_sae)
    if filter == "dead":
        indices = indices[frequency == 0]
    elif filter == "alive":
        indices = indices[frequency > 0]
    elif filter == "dense":
        indices = indices[frequency > DENSE_FRACTION]
    query = query.strip()
    if query:
        indices = indices[_matching(job, analysis, query)[indices]]
    if sort != "index":
        keys = np.asarray(getattr(analysis, sort))[indices]
        # Stable sort on the key, ties broken by index; descending flips the key, not the ties.
        indices = indices[np.lexsort((indices, -keys if descending else keys))]
    elif descending:
        indices = indices[::-1]
    count = int(indices.size)
    start = (page - 1) * page_size
    results = [_summary(analysis, int(i)) for i in indices[start : start + page_size]]
    return {
        "count": count,
        "page": page,
        "page_size": page_size,
        "pages": max(1, math.ceil(count / page_size)),
        "sort": sort,
        "descending": descending,
        "filter": filter,
        "query": query,
        "total_features": analysis.d_sae,
        "analyzed_tokens": analysis.n_rows,
        "results": results,
    }


def _matching(job, analysis, query: str) -> np.ndarray:
    """[d_sae] bool: which features the query finds."""
    found = np.zeros(analysis.d_sae, dtype=bool)
    if query.isdecimal() and int(query) < analysis.d_sae:
        found[int(query)] = True
    needle = query.casefold()
    ids = np.array([i for i, text in _tokens(job).items() if needle in text.casefold()], dtype=np.int64)
    if ids.size:
        if analysis.window_tokens is not None:
            peaks = np.asarray(analysis.window_tokens[:, :, analysis.window])  # [d_sae, top_n]
            found |= np.isin(peaks, ids).any(axis=1)
        if analysis.logit_top_ids is not None:
            found |= np.isin(np.asarray(analysis.logit_top_ids), ids).any(axis=1)
    return found


def feature_detail(job, index: int) -> dict:
    analysis = _analysis(job)
    if not 0 <= index < analysis.d_sae:
        raise NotFound(f"Feature {index} not found: job {job.id} has features 0 to {analysis.d_sae - 1}")
    tokens = _tokens(job)
    detail = _summary(analysis, index)
    detail["total_features"] = analysis.d_sae
    edges = np.asarray(analysis.hist_edges, dtype=float)
    counts = np.asarray(analysis.hist_counts[index], dtype=int)
    detail["histogram"] = {"log10_bin_edges": [round(float(e), 4) for e in edges], "counts": counts.tolist()}
    detail["top_contexts"] = _contexts(analysis, index, tokens)
    detail["contexts_unavailable_reason"] = (
        None if analysis.window_tokens is not None
        else "The job trained on bare activations (no tokens), so there is no text to show"
    )
    detail["logit_effect"] = _logit_effect(analysis, index, tokens)
    detail["logit_effect_unavailable_reason"] = (
        None if detail["logit_effect"] is not None
        else (job.features or {}).get("logit_effect_reason") or "Not computed for this job"
    )
    return detail


def _contexts(analysis, index: int, tokens: dict[int, str]) -> list[dict]:
    if analysis.window_tokens is None:
        return []
    contexts = []
    values = np.asarray(analysis.top_values[index])
    rows = np.asarray(analysis.top_rows[index])
    window_tokens = np.asarray(analysis.window_tokens[index])
    window_values = np.asarray(analysis.window_values[index], dtype=np.float32)
    for slot in range(analysis.top_n):
        if rows[slot] < 0:
            break
        items = []
        for position in range(window_tokens.shape[1]):
            token_id = int(window_tokens[slot, position])
            if token_id < 0:
                continue
            activation = float(window_values[slot, position])
            items.append({
                "token": tokens.get(token_id, f"<{token_id}>"),
                "token_id": token_id,
                "activation": 0.0 if math.isnan(activation) else activation,
                "peak": position == analysis.window,
            })
        contexts.append({"activation": float(values[slot]), "row": int(rows[slot]), "tokens": items})
    return contexts


def _logit_effect(analysis, index: int, tokens: dict[int, str]) -> dict | None:
    if analysis.logit_top_ids is None:
        return None

    def listing(ids, values):
        return [{"token": tokens.get(int(i), f"<{int(i)}>"), "token_id": int(i), "logit": float(v)}
                for i, v in zip(np.asarray(ids[index]), np.asarray(values[index]))]

    return {
        "promoted": listing(analysis.logit_top_ids, analysis.logit_top_values),
        "suppressed": listing(analysis.logit_bottom_ids, analysis.logit_bottom_values),
    }
