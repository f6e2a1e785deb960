"""Metrics as JSON carries them. JSON has no NaN or infinity: Python writes them, but SQLite's and
PostgreSQL's JSON columns refuse them (a job's last write would fail) and strict parsers choke on
them. A metric that could not be measured (the loss of a run cancelled before its first step, the
explained variance of held-out rows that do not vary) is null, with `<name>_reason` beside it
saying why: the shape the evaluation's `ce_loss_reason` already has."""
import math

NOT_FINITE = "not measured: the computation gave no finite number (NaN or infinity)"


def json_ready(document, reasons: dict[str, str] | None = None):
    """`document` with every NaN or infinity replaced by None. Beside each such entry of a dict
    whose key is a name (`final_loss`), a `<name>_reason`: `reasons[name]` where given, else a
    generic one (a reason already set is kept). Entries keyed by data (`"128"`: a prefix width) and
    list items get theirs on the name that holds them (`prefix_explained_variance_reason`)."""
    return _clean(document, reasons or {})[0]


def _clean(value, reasons):
    """(the value made JSON-ready, whether it held a non-finite number no reason covers yet)."""
    if isinstance(value, float):
        return (value, False) if math.isfinite(value) else (None, True)
    if isinstance(value, (list, tuple)):
        items = [_clean(item, reasons) for item in value]
        return [item for item, _ in items], any(missing for _, missing in items)
    if not isinstance(value, dict):
        return value, False
    cleaned, uncovered = {}, False
    for key, item in value.items():
        if cleaned.get(key) is not None:
            continue  # a reason set for the entry before it: the document's own null does not undo it
        cleaned[key], missing = _clean(item, reasons)
        if not missing:
            continue
        if isinstance(key, str) and key.isidentifier():
            reason_key = f"{key}_reason"
            if value.get(reason_key) is None:
                cleaned[reason_key] = reasons.get(key, NOT_FINITE)
        else:
            uncovered = True
    return cleaned, uncovered
