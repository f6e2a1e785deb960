"""What a run will write to disk, known before it writes: the activation cache (one pass of rows,
float16, with its int32 token index) and its checkpoints, against the free space of the data
folder; and whether the run caches at all (`cache_activations`).

A run needs its activations once when it makes a single pass over them (max_epochs 1, or a
training_tokens budget within one pass): then they stream from the model to the SAE and no cache
is written. `auto` also streams a run of several passes whose cache would not fit the disk (each
pass then runs the model again); `always` caches (and is refused when the cache cannot fit);
`never` streams every pass.
"""
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.errors import EngineError

CACHE_MODES = ("auto", "always", "never")
# Free space a run leaves untouched: the disk is shared with checkpoints' temporary copies, logs
# and other jobs, so a cache that would fill it to the last byte does not "fit".
FREE_SPACE_MARGIN = 0.05
# Checkpoints of one run kept on disk at once, at most (the newest and the one being written). A
# streamed run's checkpoints from inside an epoch (checkpoint_interval_s) each replace the one
# before (engine.trainer.checkpoint.Writer), so they keep to this too.
CHECKPOINTS_ON_DISK = 2


def cache_bytes(rows: int, d_model: int) -> int:
    """A cache of `rows`: the float16 rows, the int32 token id of each, the .npy headers."""
    return int(rows) * (int(d_model) * 2 + 4) + 4096


def checkpoint_bytes(d_in: int, d_sae: int) -> int:
    """One checkpoint: the SAE's float32 weights (both matrices, both biases, a threshold per
    feature) and Adam's two moments of each."""
    params = 2 * int(d_in) * int(d_sae) + 2 * int(d_sae) + int(d_in)
    return params * 4 * 3


def seek_record_bytes(sequences: int) -> int:
    """What a streamed run's checkpoint holds besides the SAE: the rows of each sequence of the
    pass (int32), so a resume seeks into the corpus without a tokenizing pass first
    (engine.activations.stream.ActivationStream.seek_record)."""
    return 4 * int(sequences)


def estimate_sequences_per_pass(*, rows_per_pass: int, documents: int, lines: int, packing: str,
                                max_sequence_length: int) -> int:
    """Sequences one pass gives (estimate_rows_per_pass's rows): windows of max_sequence_length
    for concat, a line or a document each otherwise."""
    if packing == "concat":
        return math.ceil(rows_per_pass / max_sequence_length)
    return lines if packing == "lines" else documents


def free_bytes(folder: Path) -> int:
    """Free space of the file system holding `folder` (its nearest existing parent when it is
    still to be made)."""
    return shutil.disk_usage(_existing(folder)).free


def same_file_system(a: Path, b: Path) -> bool:
    """Whether `a` and `b` (or their nearest existing parents) are on one file system."""
    return os.stat(_existing(a)).st_dev == os.stat(_existing(b)).st_dev


def _existing(folder: Path) -> Path:
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def bytes_per_token(tokenizer, texts) -> float | None:
    """UTF-8 bytes per token of `texts` under `tokenizer` (a sample of a corpus); None for no text."""
    texts = [t for t in texts if t]
    if not texts:
        return None
    tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    return sum(len(t.encode("utf-8")) for t in texts) / tokens if tokens else None


def estimate_rows_per_pass(*, text_bytes: int, bytes_per_token: float, documents: int, lines: int, packing: str,
                           max_sequence_length: int) -> int:
    """Rows one pass over a corpus gives, from its size in text and a sample's bytes per token:
    every token for concat; lines and documents are cut at max_sequence_length each."""
    tokens = math.ceil(text_bytes / bytes_per_token)
    if packing == "concat":
        return tokens
    units = lines if packing == "lines" else documents
    return min(tokens, units * max_sequence_length)


def passes_needed(*, rows_per_pass: int, eval_fraction: float, max_epochs: int, training_tokens: int | None) -> int:
    """How many passes over the corpus the run makes: max_epochs, or fewer when a training_tokens
    budget ends sooner."""
    from engine.defaults import eval_rows

    train_rows = max(1, rows_per_pass - eval_rows(rows_per_pass, eval_fraction))
    if training_tokens is None:
        return max_epochs
    return max(1, min(max_epochs, math.ceil(training_tokens / train_rows)))


@dataclass
class DiskPlan:
    cache: bool  # the run writes an activation cache
    passes: int  # over the corpus
    rows_per_pass: int
    cache_bytes: int  # what the cache would take (0 when not caching)
    checkpoint_bytes: int  # the checkpoints kept at once
    needed_bytes: int  # what the run writes on the data folder's disk
    free_bytes: int
    reason: str  # why it caches or streams
    # The model's weights from_pretrained downloads into the hub cache (engine.models.hub_files; 0: none,
    # or all cached). On the data folder's disk they are part of needed_bytes; elsewhere
    # (download_free_bytes: that disk's free space) they are checked against that disk alone.
    download_bytes: int = 0
    download_free_bytes: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def plan_disk(*, cache_activations: str, rows_per_pass: int, d_model: int, d_sae: int, max_epochs: int,
              eval_fraction: float, training_tokens: int | None, free: int, sites: int = 1,
              sequences: int = 0, download_bytes: int = 0, download_free: int | None = None) -> DiskPlan:
    """Whether the run caches, and what it needs; raises DiskFull (a message that says how large
    and what to change) when it cannot fit. `sites`: the caches it writes side by side (a
    transcoder's MLP input and output: 2). `sequences`: those of a pass, whose rows a streamed
    run's checkpoints keep (seek_record_bytes). `download_bytes`: the model's weights still to
    download, on the data folder's disk, or on another whose free space is `download_free`."""
    if cache_activations not in CACHE_MODES:
        raise ValueError(f"cache_activations must be one of {', '.join(CACHE_MODES)}")
    passes = passes_needed(rows_per_pass=rows_per_pass, eval_fraction=eval_fraction, max_epochs=max_epochs,
                           training_tokens=training_tokens)
    # A budget within one pass reads only the rows it trains on (and the held-out tail).
    rows = rows_per_pass if training_tokens is None or passes > 1 else min(rows_per_pass, rows_for_budget(training_tokens, eval_fraction))
    checkpoints = CHECKPOINTS_ON_DISK * checkpoint_bytes(d_model, d_sae)
    cached = sites * cache_bytes(rows, d_model)
    usable = int(free * (1 - FREE_SPACE_MARGIN))
    # The weights download before the run writes anything, and stay in the hub cache beside it.
    beside = download_bytes if download_free is None else 0
    fits = beside + cached + checkpoints <= usable
    if cache_activations == "always":
        cache, reason = True, "cache_activations is always"
    elif cache_activations == "never":
        cache, reason = False, "cache_activations is never: every pass runs the model"
    elif passes == 1:
        cache, reason = False, "the run reads its activations once: they stream to the SAE"
    elif fits:
        cache, reason = True, f"{passes} passes over the activations, and the cache fits the disk"
    else:
        cache, reason = False, (f"the cache ({size_text(cached)}) would not fit the free disk ({size_text(free)}): every one of "
                                f"the {passes} passes runs the model")
    if not cache:
        checkpoints += CHECKPOINTS_ON_DISK * seek_record_bytes(sequences)
    needed = beside + checkpoints + (cached if cache else 0)
    plan = DiskPlan(cache=cache, passes=passes, rows_per_pass=rows_per_pass, cache_bytes=cached if cache else 0,
                    checkpoint_bytes=checkpoints, needed_bytes=needed, free_bytes=free, reason=reason,
                    download_bytes=download_bytes, download_free_bytes=download_free)
    if download_free is not None and download_bytes > int(download_free * (1 - FREE_SPACE_MARGIN)):
        raise DiskFull(plan, f"The model's weights are {size_text(download_bytes)} to download but the disk of the "
                             f"hub cache has {size_text(download_free)} free: free disk space there, or choose a "
                             "smaller model.")
    if needed > usable:
        raise DiskFull(plan, _advice(plan, cache_activations, cache_rows=rows))
    return plan


def rows_for_budget(training_tokens: int, eval_fraction: float) -> int:
    """Rows a budget's single pass reads: the training tokens and the held-out tail after them
    (engine.defaults.eval_rows of these rows leaves training_tokens to train on)."""
    from engine.defaults import eval_rows

    if eval_fraction <= 0:
        return training_tokens
    return training_tokens + eval_rows(math.ceil(training_tokens / (1 - eval_fraction)), eval_fraction)


def _advice(plan: DiskPlan, mode: str, *, cache_rows: int) -> str:
    parts = [f"This run needs {size_text(plan.needed_bytes)} of disk"]
    download = (f"the model's weights to download, {size_text(plan.download_bytes)}, "
                if plan.download_bytes and plan.download_free_bytes is None else "")
    if plan.cache:
        # The rows cached, fewer than a pass's when a budget ends within one pass.
        parts.append(f" ({download}an activation cache of {size_text(plan.cache_bytes)} for {cache_rows:,} tokens and "
                     f"checkpoints of {size_text(plan.checkpoint_bytes)})")
    else:
        parts.append(f" ({download}checkpoints of {size_text(plan.checkpoint_bytes)})")
    parts.append(f" but the data folder has {size_text(plan.free_bytes)} free. ")
    if plan.cache and mode == "always":
        parts.append("Set cache_activations to auto or never (the activations then stream from the model), lower "
                     "training_tokens or use a smaller corpus, or free disk space.")
    elif download:
        parts.append("Lower hidden_dim, choose a smaller model, or free disk space.")
    else:
        parts.append("Lower hidden_dim or free disk space.")
    return "".join(parts)


def size_text(n: int) -> str:
    """A byte count as people read it: 1.5 GB, 200.0 kB (decimal units, as disks are sold)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


class DiskFull(EngineError):
    """The run cannot fit the disk; `plan` says what it would need."""

    def __init__(self, plan: DiskPlan, message: str):
        super().__init__(message)
        self.plan = plan

    def __reduce__(self):
        # Both arguments: an error that crosses a process (a queue's result, a DDP rank) unpickles.
        return type(self), (self.plan, str(self))
