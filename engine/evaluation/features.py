"""What each feature of a trained SAE responds to, over its whole activations cache in one pass.

For every feature: the top-N activating tokens, each with a +-W token context window carrying the
feature's activation on every window token; its firing frequency, mean and max activation; a
histogram of its non-zero activations; and, given the language model's unembedding, the vocabulary
tokens its decoder direction promotes and suppresses most (the logit effect of Bricken et al. 2023,
"Towards Monosemanticity").

Activations are in the SAE's scaled space: f = sae.encode(s * x), which equals the exported SAE's
encode(x) (engine.sae.export). Memory does not grow with the number of rows: the rows are read
`chunk_rows` at a time in corpus order, statistics are accumulated from each chunk's firing
entries, and only a running top-N per feature is kept (values, rows and float16 windows,
[d_sae, top_n, 2W+1]). The largest transient is the chunk's codes, [chunk_rows + 2W, d_sae]
float32 (plus what sae.encode needs to compute them), so chunk_rows is the memory knob.
"""

import json
import math
import mmap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.activations.source import float_tensor, read_rows
from engine.errors import AnalysisCancelled, EngineError
from engine.files import AtomicFolder

# Histogram of log10(activation), the same edges for every feature so histograms compare:
# 48 bins of 1/6 decade from 1e-4 to 1e4. Scaled-space activations of trained SAEs sit around
# 1e-3..1e2; anything outside the range is counted in the first or last bin.
HIST_EDGES = np.linspace(-4.0, 4.0, 49, dtype=np.float32)

# Bound on the transient index tensors (entries), so a dense chunk or a huge d_sae stays small.
_ENTRIES_PER_PASS = 1 << 22

_REQUIRED_ARRAYS = ("frequency", "mean_activation", "max_activation", "hist_edges", "hist_counts", "top_values",
                    "top_rows")
_OPTIONAL_ARRAYS = ("window_values", "window_tokens", "logit_top_ids", "logit_top_values", "logit_bottom_ids",
                    "logit_bottom_values")


@dataclass
class FeatureAnalysis:
    n_rows: int
    d_sae: int
    top_n: int
    window: int
    frequency: np.ndarray  # [d_sae] float64: share of rows where the feature is > 0
    mean_activation: np.ndarray  # [d_sae] float32: over the rows where it fired; 0 if it never fired
    max_activation: np.ndarray  # [d_sae] float32; 0 if it never fired
    hist_edges: np.ndarray  # [n_bins + 1] float32 log10(activation) edges, shared by all features
    hist_counts: np.ndarray  # [d_sae, n_bins] int64 non-zero activations per bin
    top_values: np.ndarray  # [d_sae, top_n] float32, descending; 0 in empty slots
    top_rows: np.ndarray  # [d_sae, top_n] int64; -1 in empty slots
    window_values: np.ndarray | None  # [d_sae, top_n, 2W+1] float16; NaN outside the sequence / empty slots
    window_tokens: np.ndarray | None  # [d_sae, top_n, 2W+1] int32; -1 outside the sequence / empty slots
    logit_top_ids: np.ndarray | None = None  # [d_sae, n_logits] int64, most promoted first
    logit_top_values: np.ndarray | None = None  # [d_sae, n_logits] float32
    logit_bottom_ids: np.ndarray | None = None  # most suppressed first
    logit_bottom_values: np.ndarray | None = None


@torch.no_grad()
def analyze_features(
    sae,
    scaling_factor: float,
    activations,
    *,
    token_ids: np.ndarray | None = None,
    sequence_starts: np.ndarray | None = None,
    top_n: int = 20,
    window: int = 12,
    chunk_rows: int = 4096,
    device: str = "cpu",
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    first_row: int = 0,
) -> FeatureAnalysis:
    """`activations` are the raw rows [n_rows, d_in] in corpus order (an array or a memmap).
    `token_ids` [n_rows] and `sequence_starts` [n_sequences] (ascending, from 0) go together: with
    them every top activation gets its context window, clipped at its sequence's ends; without them
    window_values and window_tokens are None.

    A feature fires on a row when its activation is > 0. Among equal activations the earlier row
    ranks first, so where the chunks start never changes the result. hist_counts count log10 of
    the firing activations in HIST_EDGES' 48 bins of 1/6 decade over [1e-4, 1e4], the range of
    scaled-space SAE activations (about 1e-3..1e2) with margin; values beyond it go in the end
    bins. Window values are float16 (an activation above 65504 would show as inf). `first_row`:
    the row number of activations[0] in the run, which top_rows count from.
    """
    n_rows = int(activations.shape[0])
    if n_rows < 1:
        raise EngineError("There are no activation rows to analyse")
    if top_n < 1 or window < 0 or chunk_rows < 1:
        raise EngineError("top_n and chunk_rows must be at least 1 and window at least 0")
    starts = _check_sequences(token_ids, sequence_starts, n_rows)
    with_windows = starts is not None
    # Without windows no overlap is needed.
    w = int(window) if with_windows else 0
    sae = sae.to(device).eval()
    d_sae = int(sae.d_sae)
    s = float(scaling_factor)

    counts = _Counts(d_sae, device)
    top = _RunningTop(d_sae, top_n, w if with_windows else None, device)

    for start in range(0, n_rows, chunk_rows):
        if should_stop is not None and should_stop():
            raise AnalysisCancelled("Feature analysis was cancelled")
        stop = min(start + chunk_rows, n_rows)
        # W rows of overlap on each side, so every window of a row in [start, stop) was encoded.
        lo, hi = max(0, start - w), min(n_rows, stop + w)
        codes = sae.encode(_read_chunk(activations, lo, hi, device) * s)
        _count_chunk(codes, start - lo, stop - lo, lo, counts, top)
        if on_progress is not None:
            on_progress(stop, n_rows)

    top_values, top_rows, window_values = top.result()
    window_tokens = None
    if with_windows:
        window_tokens = _mask_windows(window_values, top_rows, np.asarray(token_ids), starts, w)
    if first_row:
        top_rows = np.where(top_rows >= 0, top_rows + int(first_row), top_rows)
    return FeatureAnalysis(
        n_rows=n_rows,
        d_sae=d_sae,
        top_n=int(top_n),
        window=int(window),
        **counts.result(n_rows),
        top_values=top_values,
        top_rows=top_rows,
        window_values=window_values,
        window_tokens=window_tokens,
    )


def _count_chunk(codes, own_start: int, own_stop: int, lo: int, counts, top) -> None:
    """Counts the firing entries of codes[own_start:own_stop] (rows lo + i of the activations;
    the rest of `codes` is the windows' overlap). It works on the firing entries only (a sparse
    SAE's codes are mostly zeros), in row slices that bound the index tensors when a chunk is dense."""
    own = codes[own_start:own_stop]
    pieces = max(1, math.ceil(int(torch.count_nonzero(own > 0)) / _ENTRIES_PER_PASS))
    piece_start = lo + own_start
    for part in own.chunk(pieces):
        row, feature = (part > 0).nonzero(as_tuple=True)  # row-major: rows ascending
        values = part[row, feature]
        counts.add(feature, values)
        top.merge(row + piece_start, feature, values, codes, lo)
        piece_start += part.shape[0]


class _Counts:
    """Per feature: how often it fired, the sum and maximum of its activations, and a histogram of
    their log10 (HIST_EDGES)."""

    def __init__(self, d_sae: int, device: str):
        self.d_sae = d_sae
        self.fires = torch.zeros(d_sae, dtype=torch.int64, device=device)
        self.sums = torch.zeros(d_sae, dtype=torch.float64, device=device)
        self.maxima = torch.zeros(d_sae, dtype=torch.float32, device=device)
        self.n_bins = len(HIST_EDGES) - 1
        self.hist = torch.zeros(d_sae * self.n_bins, dtype=torch.int64, device=device)
        self.inner_edges = torch.from_numpy(HIST_EDGES[1:-1]).to(device)

    def add(self, feature: torch.Tensor, values: torch.Tensor) -> None:
        """Firing entries: which feature, and its activation."""
        self.fires += torch.bincount(feature, minlength=self.d_sae)
        self.sums.index_add_(0, feature, values.double())
        self.maxima.scatter_reduce_(0, feature, values, reduce="amax")
        # right=True: bin j holds [edge j, edge j+1); below the range -> 0, above -> n_bins - 1.
        bins = torch.bucketize(values.log10(), self.inner_edges, right=True)
        self.hist += torch.bincount(feature * self.n_bins + bins, minlength=self.hist.numel())

    def result(self, n_rows: int) -> dict:
        counts = self.fires.cpu().numpy()
        return {
            "frequency": counts.astype(np.float64) / n_rows,
            "mean_activation": np.where(counts > 0, self.sums.cpu().numpy() / np.maximum(counts, 1), 0.0).astype(np.float32),
            "max_activation": self.maxima.cpu().numpy(),
            "hist_edges": HIST_EDGES.copy(),
            "hist_counts": self.hist.view(self.d_sae, self.n_bins).cpu().numpy(),
        }


class _RunningTop:
    """The top_n activations per feature seen so far, ordered by value descending then row
    ascending (so where chunks start never changes the result), with the feature's activations
    on each one's window (unmasked; see _mask_windows). Empty slots hold value 0 and row -1."""

    def __init__(self, d_sae: int, top_n: int, window: int | None, device: str):
        self.top_n = top_n
        self.values = torch.zeros(d_sae, top_n, dtype=torch.float32, device=device)
        self.rows = torch.full((d_sae, top_n), -1, dtype=torch.int64, device=device)
        self.windows = None
        if window is not None:
            self.offsets = torch.arange(-window, window + 1, device=device)
            self.windows = torch.full((d_sae, top_n, 2 * window + 1), math.nan, dtype=torch.float16, device=device)

    def merge(self, rows: torch.Tensor, feature: torch.Tensor, values: torch.Tensor, codes: torch.Tensor,
              codes_start: int) -> None:
        """Firing entries (global row, feature, value > 0) with rows ascending and later than any
        merged before; `codes` hold rows from codes_start on, covering every entry's window."""
        # Only what beats a feature's current last slot can enter (an equal value loses to the
        # earlier row already there); after the first chunks that is a small share.
        beats = values > self.values[feature, -1]
        rows, feature, values = rows[beats], feature[beats], values[beats]
        if len(values) == 0:
            return
        # Group by feature, value descending; the stable sorts keep rows ascending among ties.
        order = values.argsort(descending=True, stable=True)
        order = order[feature[order].argsort(stable=True)]
        rows, feature, values = rows[order], feature[order], values[order]
        touched, group_sizes = feature.unique_consecutive(return_counts=True)
        group = torch.repeat_interleave(torch.arange(len(touched), device=feature.device), group_sizes)
        rank = torch.arange(len(feature), device=feature.device) - (group_sizes.cumsum(0) - group_sizes)[group]
        keep = rank < self.top_n
        group, rank = group[keep], rank[keep]
        new_values = torch.zeros(len(touched), self.top_n, dtype=torch.float32, device=values.device)
        new_rows = torch.full((len(touched), self.top_n), -1, dtype=torch.int64, device=values.device)
        new_values[group, rank], new_rows[group, rank] = values[keep], rows[keep]

        # The kept entries come from earlier rows than any new one and both lists are ordered, so
        # a stable sort on the value keeps (value desc, row asc).
        all_values = torch.cat([self.values[touched], new_values], dim=1)
        pick = all_values.argsort(dim=1, descending=True, stable=True)[:, : self.top_n]
        self.values[touched] = all_values.gather(1, pick)
        self.rows[touched] = torch.cat([self.rows[touched], new_rows], dim=1).gather(1, pick)
        if self.windows is None:
            return
        windows = self.windows[touched[:, None], pick.clamp(max=self.top_n - 1)]
        group, slot = ((pick >= self.top_n) & (self.values[touched] > 0)).nonzero(as_tuple=True)
        feature = touched[group]
        local = self.rows[feature, slot] - codes_start
        block = max(1, _ENTRIES_PER_PASS // len(self.offsets))
        for b in range(0, len(feature), block):
            f, pos = feature[b : b + block], (local[b : b + block, None] + self.offsets).clamp(0, codes.shape[0] - 1)
            windows[group[b : b + block], slot[b : b + block]] = codes[pos, f[:, None]].to(torch.float16)
        self.windows[touched] = windows

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        windows = None if self.windows is None else self.windows.cpu().numpy()
        return self.values.cpu().numpy(), self.rows.cpu().numpy(), windows


def _mask_windows(window_values: np.ndarray, top_rows: np.ndarray, token_ids: np.ndarray, starts: np.ndarray,
                  w: int) -> np.ndarray:
    """Set window_values to NaN outside each top row's sequence (and in empty slots), in place, and
    return the window token ids (-1 there)."""
    d_sae, top_n, width = window_values.shape
    n_rows = len(token_ids)
    tokens = np.full(window_values.shape, -1, dtype=np.int32)
    offsets = np.arange(-w, w + 1)
    block = max(1, _ENTRIES_PER_PASS // (top_n * width))
    for b in range(0, d_sae, block):
        rows = top_rows[b : b + block, :, None]
        pos = np.clip(rows + offsets, 0, n_rows - 1)
        sequence = np.searchsorted(starts, np.clip(rows, 0, None), side="right")
        valid = (rows >= 0) & (rows + offsets >= 0) & (rows + offsets < n_rows)
        valid &= np.searchsorted(starts, pos, side="right") == sequence
        window_values[b : b + block][~valid] = np.nan
        tokens[b : b + block] = np.where(valid, token_ids[pos], -1)
    return tokens


def _check_sequences(token_ids, sequence_starts, n_rows: int) -> np.ndarray | None:
    if token_ids is None and sequence_starts is None:
        return None
    if token_ids is None or sequence_starts is None:
        raise EngineError("token_ids and sequence_starts go together: pass both or neither")
    if np.shape(token_ids) != (n_rows,):
        raise EngineError(f"token_ids has shape {np.shape(token_ids)}: expected one id per activation row ({n_rows})")
    starts = np.asarray(sequence_starts, dtype=np.int64)
    if starts.ndim != 1 or len(starts) == 0 or starts[0] != 0 or (np.diff(starts) < 0).any() or starts[-1] > n_rows:
        raise EngineError(f"sequence_starts must be ascending row numbers from 0 up to {n_rows}")
    return starts


def _read_chunk(activations, lo: int, hi: int, device: str) -> torch.Tensor:
    if hasattr(activations, "read_with_tokens"):  # rows streamed from the model (engine.activations.stream.SequentialRows)
        return float_tensor(activations.read(lo, hi), device)
    if isinstance(activations, torch.Tensor):
        return activations[lo:hi].to(device, torch.float32)
    # pread maps nothing into this process, so a pass over a large cache leaves no resident pages.
    # Only for the memmap of a whole file: a slice of one keeps its parent's offset.
    whole_file = isinstance(activations, np.memmap) and isinstance(activations.base, mmap.mmap)
    if whole_file and activations.flags.c_contiguous:
        rows = read_rows(activations, np.arange(lo, hi))
    else:
        rows = activations[lo:hi]
    return float_tensor(rows, device)


@torch.no_grad()
def logit_effects(sae, scaling_factor: float, unembedding: torch.Tensor, *, norm_weight: torch.Tensor | None = None,
                  n: int = 10, chunk_features: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The n vocabulary tokens each feature's decoder direction promotes and suppresses most.

    `unembedding` is the LM's output embedding weight [vocab, d_in]; `norm_weight` [d_in] is the
    final norm's effective gain (for Gemma's RMSNorm, 1 + weight), multiplied into the direction
    first. The raw-space direction of feature i is W_dec[i] / scaling_factor. The products run in
    the unembedding's dtype and device, chunk_features features at a time (never a [d_sae, vocab]
    matrix). Returns (top_ids, top_values, bottom_ids, bottom_values), each [d_sae, n]: top most
    promoted first, bottom most suppressed first.
    """
    unembedding = unembedding.detach()
    vocab, d_in = unembedding.shape
    if d_in != sae.d_out:
        raise EngineError(f"The unembedding has width {d_in} but the SAE writes {sae.d_out}-wide activations")
    if norm_weight is not None and tuple(norm_weight.shape) != (d_in,):
        raise EngineError(f"norm_weight has shape {tuple(norm_weight.shape)}: expected ({d_in},)")
    if n < 1 or chunk_features < 1:
        raise EngineError("n and chunk_features must be at least 1")
    n = min(int(n), vocab)
    device, dtype = unembedding.device, unembedding.dtype
    gain = None if norm_weight is None else norm_weight.detach().to(device, torch.float32)
    parts = []
    for start in range(0, sae.d_sae, chunk_features):
        direction = sae.W_dec[start : start + chunk_features].detach().to(device, torch.float32) / float(scaling_factor)
        if gain is not None:
            direction = direction * gain
        logits = (direction.to(dtype) @ unembedding.T).float()
        top, bottom = logits.topk(n, dim=1), logits.topk(n, dim=1, largest=False)
        parts.append((top.indices, top.values, bottom.indices, bottom.values))
    top_ids, top_values, bottom_ids, bottom_values = (torch.cat(p).cpu().numpy() for p in zip(*parts))
    return top_ids.astype(np.int64), top_values, bottom_ids.astype(np.int64), bottom_values


def save_analysis(analysis: FeatureAnalysis, folder: Path) -> None:
    """One <field>.npy per array (None fields are left out) and meta.json. Written into
    <folder>.partial and renamed, so a folder that exists is complete; an older analysis there is
    replaced."""
    with AtomicFolder(folder) as partial:
        for name in _REQUIRED_ARRAYS + _OPTIONAL_ARRAYS:
            array = getattr(analysis, name)
            if array is not None:
                np.save(partial / f"{name}.npy", np.asarray(array), allow_pickle=False)
        meta = {"n_rows": analysis.n_rows, "d_sae": analysis.d_sae, "top_n": analysis.top_n, "window": analysis.window}
        (partial / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def load_analysis(folder: Path, *, mmap: bool = True) -> FeatureAnalysis:
    """The analysis save_analysis wrote; arrays memory-mapped read-only when `mmap`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EngineError(f"Feature analysis folder '{folder.name}' does not exist: run the analysis first")
    missing = [f"{name}.npy" for name in _REQUIRED_ARRAYS if not (folder / f"{name}.npy").is_file()]
    if not (folder / "meta.json").is_file():
        missing.append("meta.json")
    if missing:
        raise EngineError(
            f"Feature analysis folder '{folder.name}' is incomplete (missing {', '.join(missing)}): run the analysis again"
        )
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    mode = "r" if mmap else None
    arrays = {}
    for name in _REQUIRED_ARRAYS + _OPTIONAL_ARRAYS:
        path = folder / f"{name}.npy"
        arrays[name] = np.load(path, mmap_mode=mode, allow_pickle=False) if path.is_file() else None
    return FeatureAnalysis(n_rows=int(meta["n_rows"]), d_sae=int(meta["d_sae"]), top_n=int(meta["top_n"]),
                           window=int(meta["window"]), **arrays)
