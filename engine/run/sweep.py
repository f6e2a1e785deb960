"""A sweep: a family of runs on one model and one corpus that share the model and its forward
passes. The model is loaded once; every (layer, hook point) site the members read is extracted
from the same batches (engine.activations.extract.extract_sites: one forward per batch, stopped after the
deepest site), one file per site; then each member runs as a single run would on its site's file
(engine.run.run with that file as its cache and the shared model), with its own optimizer,
schedule, RNG, checkpoints and artifacts. A member that fails (its SAE out of memory, NaN) fails
alone: the others go on.

A sweep streams instead (no site file is written) when a member's cache_activations is never, or
when they are auto and the sites' caches with every member's checkpoints would not fit the disk,
or when a member resumes a streamed checkpoint. Then every member trains at once, as its run
alone would stream (engine.trainer.streamed), from passes of the model shared by all of them
(engine.trainer.shared_stream: one forward per batch for every site); a member whose epochs or
training_tokens end sooner stops while the others go on. Each is then evaluated and analysed as a
streamed run is (engine.run.runner.finish_streamed: the model runs again over its rows read after
training), one after another. A streaming sweep resumed (its members' resume_from, each its own
checkpoint) takes each member back to its checkpoint's step and block; the passes start at the
earliest of them, and the corpus is tokenized once for the rows of each sequence."""
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from engine import disk
from engine.errors import EngineError, ExtractionCancelled
from engine.run import sources
from engine.run.runner import finish_streamed, load_spec_model, run
from engine.run.spec import EXTRACTING, LOADING, TRAINING, RunCallbacks, RunOutcome, RunSpec

# What every member must share: one pass over the corpus feeds them all, so the sequences (and the
# batches' seeded order, which a member's first epoch follows) are the same for each.
# A streaming sweep's members may differ in training_tokens (each reads the rows its budget needs
# from the same passes); a cached one's share it (the site files hold the rows of one budget).
SHARED_FIELDS = ("model", "corpus", "text_field", "packing", "max_sequence_length", "batch_size",
                 "prepend_bos", "exclude_special_tokens", "quantization", "device", "cpu_bf16", "token")


@dataclass
class SweepSpec:
    members: list[RunSpec]
    # Where each (layer_number, hook_point) site's activations go; a complete file there is reused.
    site_paths: dict[tuple[int, str], Path] = field(default_factory=dict)


@dataclass
class SweepCallbacks:
    """`members[i]`: member i's own RunCallbacks (its should_stop cancels it alone). Extraction
    reports go to every member that waits for it; it stops when all of them are cancelled.
    `on_member_end(i, outcome, error)`: member i ended, with its outcome or what it raised."""

    members: list[RunCallbacks]
    on_extracted: Callable | None = None  # (engine.activations.extract.SitesExtraction)
    # A streaming sweep's training ended for every member (engine.trainer.shared_stream.SharedPasses).
    on_streamed: Callable | None = None
    on_member_end: Callable[[int, RunOutcome | None, BaseException | None], None] | None = None


@dataclass
class SweepOutcome:
    outcomes: list  # per member: its RunOutcome, or the exception it failed with
    forward_batches: int = 0  # the model's forward passes over the corpus (one per batch, for every site)
    tokens_extracted: int = 0  # rows the forward passes computed (a streaming sweep: over all its passes)
    extraction_seconds: float = 0.0  # a streaming sweep: its training, which the passes ran inside
    streamed: bool = False  # no site file: the members trained from shared passes of the model


def site_of(spec: RunSpec) -> tuple[int, str]:
    return spec.layer_number, spec.hook_point


def check_sweep(spec: SweepSpec) -> None:
    if not spec.members:
        raise EngineError("A sweep needs at least one member")
    first = spec.members[0]
    if first.model is None or first.corpus is None or first.activations_file is not None:
        raise EngineError("A sweep's members train on a model and a corpus (not an activations file)")
    for number, member in enumerate(spec.members[1:], start=1):
        for name in SHARED_FIELDS:
            if getattr(member, name) != getattr(first, name):
                raise EngineError(f"Sweep member {number}'s {name} differs from member 0's: one pass over the corpus "
                                  "feeds every member, so they share it")
        if member.config.seed != first.config.seed:
            raise EngineError(f"Sweep member {number}'s seed differs from member 0's: the batches' order is shared")
    missing = {site_of(m) for m in spec.members} - set(spec.site_paths)
    if missing:
        raise EngineError(f"No file is given for the sites {sorted(missing)}")


def run_sweep(spec: SweepSpec, callbacks: SweepCallbacks) -> SweepOutcome:
    """Load the model, extract the sites that still need it, then run the members one after
    another; each member's ending goes to on_member_end as soon as it is known."""
    check_sweep(spec)
    first = spec.members[0]
    member_callbacks = callbacks.members
    for member_cb in member_callbacks:
        _call(member_cb.on_phase, LOADING, device=first.device)
    loaded = load_spec_model(first)
    outcome = SweepOutcome(outcomes=[None] * len(spec.members))
    streaming = _streaming(spec, loaded)
    if streaming is not None:
        _stream(spec, callbacks, loaded, outcome, *streaming)
        return outcome
    _check_one_budget(spec)
    caches, failed = _extract(spec, callbacks, loaded, outcome)
    for index, member in enumerate(spec.members):
        if failed.get(index) is not None:
            _end(callbacks, outcome, index, *failed[index])
            continue
        try:
            cancelled = _call(member_callbacks[index].should_stop)
        except Exception as err:  # noqa: BLE001 - what its should_stop raised (its job taken over) is its own
            _end(callbacks, outcome, index, None, err)
            continue
        if cancelled:  # cancelled while it waited for its turn: nothing to train, nothing written
            _end(callbacks, outcome, index, RunOutcome(paths=member.paths, cancelled_in="waiting"), None)
            continue
        try:
            ended = run(replace(member, cache=caches[index]), member_callbacks[index], loaded=loaded), None
        except Exception as err:  # noqa: BLE001 - one member's failure is its own: the rest go on
            ended = None, err
            _free_memory(first.device)
        _end(callbacks, outcome, index, *ended)
    return outcome


def _check_one_budget(spec: SweepSpec) -> None:
    first = spec.members[0]
    for number, member in enumerate(spec.members[1:], start=1):
        if member.training_tokens != first.training_tokens:
            raise EngineError(f"Sweep member {number}'s training_tokens differs from member 0's: the sweep caches "
                              "each site's rows once, for one budget (a streaming sweep's members may differ)")


def _streaming(spec: SweepSpec, loaded):
    """(why the sweep streams, the corpus as sequences, the rows of each sequence), or None when it
    caches its sites."""
    members = spec.members
    modes = {m.cache_activations for m in members}
    resumes_streamed = any(m.resume_from is not None and sources.checkpoint_streamed(m.resume_from) for m in members)
    if "never" not in modes and not resumes_streamed:
        if "always" in modes or all(Path(spec.site_paths[site_of(m)]).is_file() for m in members):
            return None
    source = sources.sequence_source(members[0], loaded)
    # The corpus is counted as far as the member reading the most needs (its end without a budget).
    needed = [sources.rows_needed(m) for m in members]
    rows = source.rows_per_sequence(max_rows=None if None in needed else max(needed))
    if resumes_streamed:
        return "its members resume streamed checkpoints: the model runs once per pass for all of them", source, rows
    if "never" in modes:
        return "cache_activations is never: the model runs once per pass for all the sweep's members", source, rows
    from engine.models.info import hidden_size

    # auto: one cache per site, read by its members for every pass, and every member's checkpoints.
    corpus_rows = int(rows.sum())
    read = max(sources.rows_to_read(m, corpus_rows) or corpus_rows for m in members)
    d_model, sites = hidden_size(loaded.config), len({site_of(m) for m in members})
    caches = sites * disk.cache_bytes(read, d_model)
    checkpoints = sum(disk.CHECKPOINTS_ON_DISK * disk.checkpoint_bytes(d_model, m.config.hidden_dim) for m in members)
    free = sources.free_space(members[0])
    if caches + checkpoints <= int(free * (1 - disk.FREE_SPACE_MARGIN)):
        return None
    return (f"the sweep's {sites} site caches ({disk.size_text(caches)}) would not fit the free disk "
            f"({disk.size_text(free)}) with its checkpoints: the model runs once per pass for all its members"), source, rows


def _stream(spec: SweepSpec, callbacks: SweepCallbacks, loaded, outcome: SweepOutcome, reason: str, source, rows):
    """Every member trained at once from shared passes of the model, then each finished in turn."""
    from engine.activations.stream import ActivationStream
    from engine.trainer.shared_stream import train_together
    from engine.trainer.streamed import streamed_steps

    members, member_callbacks = spec.members, callbacks.members
    corpus_rows = int(rows.sum())
    outcome.streamed = True
    streams, plans, steps, ended = {}, {}, {}, {}
    for i, member in enumerate(members):
        member_cb = member_callbacks[i]
        try:
            if _call(member_cb.should_stop):  # cancelled before it trained: nothing written
                ended[i] = RunOutcome(paths=member.paths, cancelled_in="waiting"), None
                continue
            plans[i] = replace(sources.disk_plan(member, loaded, corpus_rows, mode="never", sequences=len(rows)),
                               reason=reason)
            streams[i] = ActivationStream(loaded, source, rows, layer_number=member.layer_number,
                                          batch_size=member.batch_size, hook_point=member.hook_point,
                                          n_rows=sources.rows_to_read(member, corpus_rows), corpus_rows=corpus_rows)
            _call(member_cb.on_phase, TRAINING, overlapped=False, resume_from=member.resume_from)
            config = replace(member.config, training_tokens=sources.budget(member))
            steps[i] = streamed_steps(streams[i], config, device=member.device,
                                      checkpoint_dir=member.paths.checkpoint_dir,
                                      checkpoint_prefix=member.checkpoint_prefix,
                                      on_progress=member_cb.on_train_progress, should_stop=member_cb.should_stop,
                                      on_checkpoint=member_cb.on_checkpoint, resume_from=member.resume_from)
        except Exception as err:  # noqa: BLE001 - what it was given (its disk, its site) is its own
            _call(member_cb.on_error, LOADING, err)
            ended[i] = None, err
    training = sorted(steps)
    if training:
        started = time.monotonic()
        forward_failed = set()

        def on_forward_error(err, indices):
            for index in indices:
                forward_failed.add(training[index])
                _call(member_callbacks[training[index]].on_error, EXTRACTING, err)

        # The passes' groups are those of the member reading the most rows. A member reading fewer
        # (a smaller budget) gets its last group's rows from a larger group than its run alone would
        # compute: the same rows to float rounding (the batches are padded differently).
        lead = max((streams[i] for i in training), key=lambda stream: stream.n_rows)
        results, passes = train_together(lead, [(site_of(members[i]), steps[i]) for i in training],
                                         on_forward_error=on_forward_error)
        outcome.forward_batches, outcome.tokens_extracted = passes.forward_batches, passes.rows
        outcome.extraction_seconds = time.monotonic() - started
        _call(callbacks.on_streamed, passes)
        for i, result in zip(training, results):
            if isinstance(result, BaseException):
                if i not in forward_failed:
                    _call(member_callbacks[i].on_error, TRAINING, result)
                ended[i] = None, result
                _free_memory(members[i].device)
            else:
                ended[i] = result
    for i, member in enumerate(members):
        if not isinstance(ended[i], tuple):  # trained: evaluated, saved and analysed as a streamed run
            try:
                ended[i] = finish_streamed(member, member_callbacks[i], loaded=loaded, stream=streams[i],
                                           result=ended[i], disk=plans[i]), None
            except Exception as err:  # noqa: BLE001 - one member's failure is its own: the rest go on
                ended[i] = None, err
                _free_memory(member.device)
        _end(callbacks, outcome, i, *ended[i])


def _call(callback, *args, **kwargs):
    return None if callback is None else callback(*args, **kwargs)


def _end(callbacks, outcome, index, result, error):
    outcome.outcomes[index] = result if error is None else error
    _call(callbacks.on_member_end, index, result, error)


def _extract(spec: SweepSpec, callbacks: SweepCallbacks, loaded, outcome: SweepOutcome):
    """(each member's cache file, {member: (outcome, error)} for members that cannot run): the
    sites no member's cache covers, extracted at once."""
    members, member_callbacks = spec.members, callbacks.members
    caches = [m.cache if m.cache is not None and Path(m.cache).is_file() else None for m in members]
    waiting = [i for i, cache in enumerate(caches) if cache is None]
    todo = {site_of(members[i]): spec.site_paths[site_of(members[i])] for i in waiting}
    for site, path in list(todo.items()):  # a site an earlier run of the sweep completed
        if Path(path).is_file():
            del todo[site]
    if todo:
        from engine.activations.extract import extract_sites

        first = members[0]
        source = sources.sequence_source(first, loaded)
        lengths = source.lengths()
        n_rows = sources.rows_to_read(first, int(lengths[0].sum()))
        extracting = [i for i in waiting if site_of(members[i]) in todo]
        for i in extracting:
            _call(member_callbacks[i].on_phase, EXTRACTING, device=first.device)

        def on_progress(done, total, tokens):
            for i in extracting:
                _call(member_callbacks[i].on_extraction_progress, done, total, tokens)

        def should_stop():
            # Stops only when every member waiting for it is cancelled (each cancels on its own later).
            return all(_call(member_callbacks[i].should_stop) for i in extracting)

        try:
            extraction = extract_sites(loaded, source, n_rows=n_rows, lengths=lengths, sites=todo,
                                       batch_size=first.batch_size,
                                       max_sequence_length=first.max_sequence_length, on_progress=on_progress,
                                       should_stop=should_stop, seed=first.config.seed, prepend_bos=first.prepend_bos,
                                       exclude_special_tokens=first.exclude_special_tokens)
        except ExtractionCancelled:
            return caches, {i: (RunOutcome(paths=members[i].paths, cancelled_in="extraction"), None) for i in extracting}
        except Exception as err:  # noqa: BLE001 - the members that needed it fail with it; the rest go on
            for i in extracting:
                _call(member_callbacks[i].on_error, EXTRACTING, err)
            _free_memory(first.device)
            return caches, {i: (None, err) for i in extracting}
        outcome.forward_batches, outcome.tokens_extracted = extraction.forward_batches, extraction.n_tokens
        outcome.extraction_seconds = extraction.seconds
        _call(callbacks.on_extracted, extraction)
        for i in extracting:
            _call(member_callbacks[i].on_cache_complete, extraction.results[site_of(members[i])])
    for i in waiting:
        caches[i] = spec.site_paths[site_of(members[i])]
    return caches, {}


def _free_memory(device: str) -> None:
    """What a failed member held (its SAE, optimizer, activations) goes before the next starts."""
    gc.collect()
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
