"""Per-token activations of one transformer block, streamed to a float16 .npy file.

Rows are the non-padding tokens of every sequence, in corpus order (sequence 0's tokens, then
sequence 1's, ...); the trainer shuffles them anyway. Only blocks 0..layer_number run: a hook on
the chosen block copies its output and stops the forward there.
"""

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import ActivationsError, EngineError, ExtractionCancelled
from engine.loading import LoadedModel
from engine.model_info import hidden_size, num_layers

_FINITE_CHECK_ROWS = 65536
_FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass
class ExtractionResult:
    path: Path
    n_tokens: int
    d_model: int
    n_sequences: int
    seconds: float
    tokens_per_s: float
    real_token_share: float  # real tokens / token positions the model computed (padding included)
    dtype: str = "float32"  # what the model computed in (the rows are stored as float16 regardless)
    tokens_path: Path | None = None  # token id of every row (int32), see token_index_paths
    sequence_starts_path: Path | None = None  # first row of every non-empty sequence (int64)


def token_index_paths(activations_path: Path) -> tuple[Path, Path]:
    """Where extraction keeps, beside the activations, the token id of each row and the row at
    which each sequence starts: what the feature analysis needs to show text around a token."""
    activations_path = Path(activations_path)
    stem = activations_path.name.removesuffix(".npy")
    return (activations_path.with_name(f"{stem}_tokens.npy"),
            activations_path.with_name(f"{stem}_sequence_starts.npy"))


def load_token_index(activations_path: Path):
    """(token_ids [n_rows] int32, sequence_starts [n_sequences] int64) written by
    extract_activations, or None when the activations came from elsewhere."""
    tokens_path, starts_path = token_index_paths(activations_path)
    if not (tokens_path.is_file() and starts_path.is_file()):
        return None
    return np.load(tokens_path, mmap_mode="r"), np.load(starts_path)


class _StopForward(Exception):
    """Raised by the capture hook so blocks after the chosen layer never run."""


def extract_activations(
    loaded: LoadedModel,
    texts: list[str],
    *,
    layer_number: int,
    batch_size: int,
    max_sequence_length: int,
    out_path: Path,
    on_progress: Callable[[int, int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ExtractionResult:
    import torch

    total_layers = num_layers(loaded.config)
    if not 0 <= layer_number < total_layers:
        raise EngineError(f"Layer {layer_number} does not exist: this model has layers 0 to {total_layers - 1}")
    if batch_size < 1 or max_sequence_length < 1:
        raise EngineError("batch_size and max_sequence_length must be at least 1")

    started = time.monotonic()
    encoded = loaded.tokenizer(list(texts), truncation=True, max_length=max_sequence_length, padding=False)
    ids = encoded["input_ids"]
    lengths = np.array([len(seq) for seq in ids], dtype=np.int64)
    n_tokens = int(lengths.sum())
    if n_tokens == 0:
        raise EngineError("The corpus produced no tokens: give it some text")
    d_model = hidden_size(loaded.config)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name and renamed at the end, so a file at out_path is always complete.
    partial = out_path.with_name(out_path.name + ".partial")
    rows = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=(n_tokens, d_model))

    captured: list = []

    def capture(_module, _inputs, output):
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _StopForward

    # Sorting by length puts similar lengths in one batch, so little compute goes to padding.
    order = [i for i in np.argsort(-lengths, kind="stable") if lengths[i] > 0]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    handle = loaded.blocks[layer_number].register_forward_hook(capture)
    sequences_done = tokens_done = positions_computed = 0
    try:
        with torch.inference_mode():
            for batch in batches:
                if should_stop is not None and should_stop():
                    raise ExtractionCancelled("Activation extraction was cancelled")
                input_ids, attention_mask = _pad([ids[i] for i in batch], loaded.tokenizer.pad_token_id, loaded.device)
                positions_computed += input_ids.numel()
                captured.clear()
                try:
                    loaded.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
                except _StopForward:
                    pass
                if not captured:
                    raise EngineError(f"Layer {layer_number} never ran during the forward pass: unsupported architecture")
                hidden = captured[0].float().cpu().numpy()
                for row, index in enumerate(batch):
                    n = lengths[index]
                    # Right padding: the real tokens are the first n positions of the row.
                    values = hidden[row, :n]
                    # Written as float16 to halve the disk and page-cache footprint; the check
                    # also catches NaN, which fails every comparison.
                    if not (np.abs(values) <= _FLOAT16_MAX).all():
                        raise ActivationsError(
                            f"Layer {layer_number} produced NaN or values beyond the float16 range: pick another layer"
                        )
                    rows[offsets[index] : offsets[index] + n] = values
                sequences_done += len(batch)
                tokens_done += int(lengths[batch].sum())
                if on_progress is not None:
                    on_progress(sequences_done, len(texts), tokens_done)
        rows.flush()
        del rows
        # The token index first: a complete activations file always has its index beside it.
        tokens_path, starts_path = token_index_paths(out_path)
        real = lengths > 0
        np.save(tokens_path, np.fromiter((t for seq in ids for t in seq), dtype=np.int32, count=n_tokens))
        np.save(starts_path, offsets[real].astype(np.int64))
        os.replace(partial, out_path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        handle.remove()

    seconds = time.monotonic() - started
    return ExtractionResult(
        path=out_path,
        n_tokens=n_tokens,
        d_model=d_model,
        n_sequences=len(texts),
        seconds=seconds,
        tokens_per_s=n_tokens / seconds if seconds > 0 else math.inf,
        real_token_share=n_tokens / positions_computed if positions_computed else 1.0,
        dtype=str(loaded.dtype).removeprefix("torch."),
        tokens_path=tokens_path,
        sequence_starts_path=starts_path,
    )


def _pad(sequences: list[list[int]], pad_id: int, device: str):
    """Right-pad a batch. Left padding would shift absolute positions in models that derive
    position ids from the cache position rather than the mask (Llama, Mistral, ...)."""
    import torch

    width = max(len(seq) for seq in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    return input_ids.to(device), attention_mask.to(device)


def load_activations(path: Path) -> np.ndarray:
    """A [tokens, d_model] float array; .npy files are memory-mapped, not read into RAM."""
    path = Path(path)
    if not path.is_file():
        raise ActivationsError(f"Activations file '{path.name}' does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise ActivationsError(f"'{path.name}' is not a readable .npy array: {exc}") from None
    elif suffix == ".safetensors":
        array = _load_safetensors(path)
    else:
        raise ActivationsError(f"Activations file '{path.name}' must be .npy or .safetensors, not '{suffix or 'no extension'}'")

    if array.ndim != 2 or array.shape[0] < 2:
        raise ActivationsError(
            f"Activations in '{path.name}' have shape {tuple(array.shape)}: expected 2-D [tokens, d_model] with at least 2 tokens"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise ActivationsError(f"Activations in '{path.name}' are {array.dtype}: expected a float dtype")
    for start in range(0, array.shape[0], _FINITE_CHECK_ROWS):
        if not np.isfinite(array[start : start + _FINITE_CHECK_ROWS]).all():
            raise ActivationsError(f"Activations in '{path.name}' contain NaN or infinite values (near row {start})")
    return array


def _load_safetensors(path: Path) -> np.ndarray:
    import torch
    from safetensors import SafetensorError, safe_open

    try:
        # Through torch so bfloat16 files load too (numpy has no bfloat16).
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
            if "activations" not in keys:
                raise ActivationsError(
                    f"'{path.name}' has no 'activations' tensor (found: {', '.join(keys) or 'none'}): save it under the key 'activations'"
                )
            tensor = handle.get_tensor("activations")
    except SafetensorError as exc:
        raise ActivationsError(f"'{path.name}' is not a readable safetensors file: {exc}") from None
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.numpy()
