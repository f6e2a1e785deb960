"""A sweep: a family of runs on one model and one corpus that share the model and its forward
passes. The model is loaded once; every (layer, hook point) site the members read is extracted
from the same batches (engine.activations.extract_sites: one forward per batch, stopped after the
deepest site), one file per site; then each member runs as a single run would on its site's file
(engine.run.run with that file as its cache and the shared model), with its own optimizer,
schedule, RNG, checkpoints and artifacts. A member that fails (its SAE out of memory, NaN) fails
alone: the others go on."""
import gc
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from engine.errors import EngineError, ExtractionCancelled
from engine.run import sources
from engine.run.runner import load_spec_model, run
from engine.run.spec import EXTRACTING, LOADING, RunCallbacks, RunOutcome, RunSpec

# What every member must share: one pass over the corpus feeds them all, so the sequences (and the
# batches' seeded order, which a member's first epoch follows) are the same for each.
SHARED_FIELDS = ("model", "corpus", "text_field", "packing", "training_tokens", "max_sequence_length", "batch_size",
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
    on_extracted: Callable | None = None  # (engine.activations.SitesExtraction)
    on_member_end: Callable[[int, RunOutcome | None, BaseException | None], None] | None = None


@dataclass
class SweepOutcome:
    outcomes: list  # per member: its RunOutcome, or the exception it failed with
    forward_batches: int = 0  # the model's forward passes over the corpus (one per batch, for every site)
    tokens_extracted: int = 0
    extraction_seconds: float = 0.0


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
        from engine.activations import extract_sites

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
