"""Where a run's rows come from: the sites it reads (its input, and the target it predicts when that
is another site), and, when it reads a corpus, the corpus as sequences (engine.text.packing), how
many rows one pass gives, whether they are cached or streamed (engine.disk), and how many of
them a training_tokens budget reads."""
from pathlib import Path

from engine.disk import free_bytes, plan_disk, rows_for_budget
from engine.models.info import hidden_size, is_causal_lm
from engine.sae import Sites, get
from engine.text.packing import SequenceSource


def run_sites(spec) -> Sites:
    """The run's sites (engine.sae.Sites), decided here and only here, from its architecture
    (`input_point`, `target_point`): an SAE reads the spec's hook_point; one that predicts another
    site reads its input_point and predicts the hook_point. The extraction, the training step, the
    evaluation's splice and the export's hook names all follow them."""
    return get(spec.config.architecture).sites(spec.hook_point)


def paired_extraction(spec) -> dict:
    """{(layer, hook point): the file its rows go to} for a run whose sites are paired, input first:
    the architecture's target_point must be the hook_point, and both sites need a cache, as training
    reads their rows at the same indices from two files."""
    from engine.errors import EngineError

    kind = get(spec.config.architecture)
    if spec.hook_point != kind.target_point:
        raise EngineError(f"A {kind.name} reads {kind.input_point} and predicts {kind.target_point}: "
                          f"its hook_point must be {kind.target_point}, not {spec.hook_point}")
    if spec.cache_activations == "never":
        # The words the API says too (training.services), which tests pin.
        raise EngineError("transcoders need a cache: their input and target rows are read at the same indices "
                          "from two files; set cache_activations to auto or always")
    sites = run_sites(spec)
    return {(spec.layer_number, sites.input): spec.paths.activations,
            (spec.layer_number, sites.target): spec.paths.targets}


def sequence_source(spec, loaded) -> SequenceSource:
    return SequenceSource(Path(spec.corpus), loaded.tokenizer, max_sequence_length=spec.max_sequence_length,
                          causal=is_causal_lm(loaded.config), prepend_bos=spec.prepend_bos,
                          exclude_special_tokens=spec.exclude_special_tokens, packing=spec.packing,
                          text_field=spec.text_field)


def budget(spec) -> int | None:
    """The run's training_tokens: the spec's, or its TrainConfig's."""
    return spec.training_tokens if spec.training_tokens is not None else spec.config.training_tokens


def disk_plan(spec, loaded, rows_per_pass: int, *, mode: str, sequences: int = 0):
    """engine.disk.plan_disk for this run on the data folder it writes to (raises DiskFull), in
    cache `mode`: the spec's, or what the run must do (a multi-process training step reads a file;
    a resume takes its batches the way its checkpoint's run did). Paired sites cache two files
    (a transcoder's: the MLP's input and output). `sequences`: the pass's, kept by a streamed run's
    checkpoints."""
    return plan_disk(cache_activations=mode, rows_per_pass=rows_per_pass, d_model=hidden_size(loaded.config),
                     sites=run_sites(spec).count, sequences=sequences,
                     d_sae=spec.config.hidden_dim, max_epochs=spec.config.max_epochs,
                     eval_fraction=spec.config.eval_fraction, training_tokens=budget(spec),
                     free=free_space(spec))


def free_space(spec) -> int:
    """What the run may write: the free space of its folder, or its disk budget when smaller."""
    free = free_bytes(spec.paths.activations.parent)
    return free if spec.disk_budget_bytes is None else min(free, spec.disk_budget_bytes)


def rows_needed(spec) -> int | None:
    """The most rows of the corpus a run can read: its budget's, when it has one and reads one
    pass at most of what it counts (None: every row of the corpus, each pass)."""
    tokens = budget(spec)
    return None if tokens is None else rows_for_budget(tokens, spec.config.eval_fraction)


def rows_to_read(spec, rows_per_pass: int) -> int | None:
    """Rows of the corpus the run reads: all of one pass, or fewer when its budget ends within it."""
    tokens = budget(spec)
    if tokens is None:
        return None
    needed = rows_for_budget(tokens, spec.config.eval_fraction)
    return needed if needed < rows_per_pass else None


def saved_rows(spec, source: SequenceSource):
    """(rows of each sequence, rows of the whole corpus) as a streamed checkpoint keeps them
    (engine.activations.stream.ActivationStream.seek_record), when they hold for this corpus as it is now and
    cover the rows this run reads; None otherwise (the run then takes a tokenizing pass for them)."""
    import numpy as np

    from engine.trainer import checkpoint

    record = checkpoint.load(Path(spec.resume_from)).payload.get("stream_seek")
    if not record or record["fingerprint"] != source.fingerprint():
        return None
    rows, corpus_rows = np.asarray(record["rows_per_sequence"], dtype=np.int32), int(record["corpus_rows"])
    wanted = rows_to_read(spec, corpus_rows)
    if int(rows.sum()) < (corpus_rows if wanted is None else wanted):  # a larger budget than the checkpoint's run
        return None
    return rows, corpus_rows


def checkpoint_streamed(path) -> bool:
    """Whether the checkpoint's run streamed its rows (it resumes the same way)."""
    from engine.trainer import checkpoint

    return bool(checkpoint.load(Path(path)).payload.get("streamed", False))


def sequences_from(source: SequenceSource, row: int, *, max_rows: int | None, n_rows: int) -> tuple:
    """(the sequences of a pass over `source` from the one holding `row` to the first that reaches
    `max_rows` rows past it, or the pass's `n_rows`th row; the row the first starts at): a
    tokenizing pass that keeps only those (ActivationStream.sequences_from for a cached run)."""
    import numpy as np

    from engine.text.sequences import Sequences, concatenate

    stop = n_rows if max_rows is None else min(n_rows, row + max_rows)
    parts, at, first_row = [], 0, None
    for chunk in source.chunks():
        ends = at + np.cumsum(chunk.rows)
        starts = ends - chunk.rows
        wanted = np.flatnonzero((ends > row) & (starts < stop))
        if len(wanted):
            lo, hi = int(wanted[0]), int(wanted[-1]) + 1
            if first_row is None:
                first_row = int(starts[lo])
            parts.append(Sequences(ids=chunk.ids[lo:hi], keep=chunk.keep[lo:hi], prepend_bos=chunk.prepend_bos))
        at = int(ends[-1]) if len(ends) else at
        if at >= stop:
            break
    return concatenate(parts), row if first_row is None else first_row
