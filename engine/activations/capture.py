"""The forward passes of an extraction: each batch of sequences through the model once, the values
at one or more hook sites (a layer and a hook point each) copied into their rows, and the forward
stopped as soon as every site has been read (blocks after the deepest one never run)."""
import numpy as np

from engine.errors import ActivationsError, EngineError, ExtractionCancelled
from engine.models.hooks import register_reader

_FLOAT16_MAX = float(np.finfo(np.float16).max)


class _StopForward(Exception):
    """Raised by the last capture hook so blocks after the deepest site never run."""


def capture_batches(loaded, plan, sites, *, on_progress, should_stop) -> tuple[int, int]:
    """Run the plan's batches once each, writing every site's rows: `sites` is a list of
    (layer_number, hook_point, rows), rows an array [plan.n_tokens, d_model] written at each
    sequence's offset. (token positions computed, padding included; forward passes run)."""
    import torch

    captured: dict[int, object] = {}

    def reader(site):
        def read(hidden):
            captured[site] = hidden
            # Whatever order a model's modules run in (a parallel-residual block runs attention and
            # MLP side by side), the forward stops once every site has its value.
            if len(captured) == len(sites):
                raise _StopForward

        return read

    handles = [register_reader(loaded.blocks[layer], hook_point, reader(site))
               for site, (layer, hook_point, _) in enumerate(sites)]
    sequences_done = tokens_done = positions_computed = forwards = 0
    lengths = plan.lengths
    try:
        with torch.inference_mode():
            for batch in plan.batches:
                if should_stop is not None and should_stop():
                    raise ExtractionCancelled("Activation extraction was cancelled")
                input_ids, attention_mask = pad_batch([plan.ids[i] for i in batch], loaded.tokenizer.pad_token_id, loaded.device)
                positions_computed += input_ids.numel()
                captured.clear()
                forwards += 1
                try:
                    loaded.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
                except _StopForward:
                    pass
                for site, (layer, hook_point, rows) in enumerate(sites):
                    if site not in captured:
                        raise EngineError(f"Layer {layer}'s {hook_point} never ran during the forward pass: "
                                          "unsupported architecture")
                    _write_rows(plan, batch, captured[site].float().cpu().numpy(), rows, layer)
                sequences_done += len(batch)
                tokens_done += int(lengths[batch].sum())
                if on_progress is not None:
                    on_progress(sequences_done, plan.n_texts, tokens_done)
    finally:
        for handle in handles:
            handle.remove()
    return positions_computed, forwards


def _write_rows(plan, batch, hidden, rows, layer):
    lengths, offsets = plan.lengths, plan.offsets
    for row, index in enumerate(batch):
        n = lengths[index]
        # Right padding: the real tokens are the first positions of the row.
        keep = plan.keep[index]
        values = hidden[row, : len(keep)][keep]
        # Written as float16 to halve the disk and page-cache footprint; the check also catches
        # NaN, which fails every comparison.
        if not (np.abs(values) <= _FLOAT16_MAX).all():
            raise ActivationsError(f"Layer {layer} produced NaN or values beyond the float16 range: pick another layer")
        rows[offsets[index] : offsets[index] + n] = values


def pad_batch(sequences: list[list[int]], pad_id: int, device: str):
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
