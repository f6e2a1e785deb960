"""Several streamed runs fed by one pass of the model: a streaming sweep's training.

Each member is a run's steps (engine.trainer.streamed.streamed_steps) on its own site's rows. A
pass over the corpus starts once every member still training has said what it reads next (an
Epoch: row ranges, front to back); the model then runs once per group of sequences for every site
those members read (engine.activations.stream.ActivationStream.pieces with `sites`), and as soon as a
member's next range has arrived it steps on it, so each member takes the same batches as its run
alone would, in the same order, from the same rows. A member whose epoch (or budget) ends before
the pass does waits for the next one; the pass stops early when no member reads on. Rows are held
from the earliest range a member of the pass still waits for: a block per member at most, plus
the group in flight and the one computed ahead in a background thread.

A member's failure (its SAE diverged, out of memory) is its own: the others go on. A failure of
the model's forward ends every member of that pass with it.
"""
import queue
import threading
from dataclasses import dataclass, field

import numpy as np

from engine.errors import ExtractionCancelled
from engine.trainer.streamed import NEXT, Epoch, stop_producer


@dataclass
class SharedPasses:
    """What the passes did: the model's forward batches (for every site at once), the groups of
    sequences and the rows they computed."""

    passes: int = 0
    forward_batches: int = 0
    groups: int = 0
    rows: int = 0


@dataclass
class _Member:
    site: tuple
    steps: object  # the generator
    request: object = None  # what it asks for now: an Epoch or NEXT
    ranges: list = field(default_factory=list)  # its Epoch's ranges not yet answered, in this pass
    epoch_at: object = None  # where the corpus holds its Epoch's first group, when it knows
    ended: bool = False
    outcome: object = None  # its TrainResult, or what it raised

    def advance(self, answer=None) -> None:
        try:
            self.request = next(self.steps) if answer is None else self.steps.send(answer)
        except StopIteration as done:
            self.ended, self.outcome, self.request = True, done.value, None
        except Exception as err:  # noqa: BLE001 - one member's failure is its own
            self.ended, self.outcome, self.request = True, err, None


def train_together(lead, members: list[tuple], *, on_forward_error=None) -> tuple[list, SharedPasses]:
    """Run every member's steps to its end. `lead`: the ActivationStream of the most rows (its
    groups are every member's); `members`: (its (layer_number, hook_point) site, its
    streamed_steps generator). Returns (per member its TrainResult or the exception it ended with,
    what the passes did). `on_forward_error(err, member indices)`: the model's forward failed."""
    state = [_Member(site=tuple(site), steps=steps) for site, steps in members]
    done = SharedPasses()
    for member in state:
        member.advance()
    while True:
        joining = [i for i, m in enumerate(state) if not m.ended and isinstance(m.request, Epoch)]
        if not joining:
            break
        try:
            _one_pass(lead, state, joining, done)
        except Exception as err:  # noqa: BLE001 - the model's forward: the pass's members end with it
            failed = [i for i in joining if not state[i].ended]
            for i in failed:
                state[i].steps.close()
                state[i].ended, state[i].outcome = True, err
            if on_forward_error is not None:
                on_forward_error(err, failed)
    for member in state:
        member.steps.close()
    return [m.outcome for m in state], done


def _one_pass(lead, state: list, joining: list, done: SharedPasses) -> None:
    for i in joining:
        member = state[i]
        member.ranges, member.epoch_at = list(member.request.ranges), member.request.at
        member.advance()
        if member.ended or member.request != NEXT:
            member.ranges = []  # it ended, or asked for another Epoch without reading this one
    reading = [i for i in joining if state[i].ranges]
    if not reading:
        return
    start = min(state[i].ranges[0][0] for i in reading)
    stop = max(state[i].ranges[-1][1] for i in reading)
    at = _seek(lead, [state[i] for i in reading], start)
    sites = list(dict.fromkeys(state[i].site for i in reading))
    groups = {}  # first sequence of each group computed: its Position
    held = _Held(sites)
    done.passes += 1
    forwards_before = lead.forward_batches
    pieces = _Ahead(lead, start, stop, at=at, sites=sites)
    try:
        for (first_row, rows, _), (first_sequence, position) in pieces:
            groups[first_sequence] = position
            held.add(first_row, rows)
            done.groups += 1
            done.rows += len(next(iter(rows.values())))
            for i in list(reading):
                member = state[i]
                while member.ranges and member.ranges[0][1] <= held.stop and not member.ended:
                    lo, hi = member.ranges.pop(0)
                    member.advance((held.rows(member.site, lo, hi), groups[lead.group_start(lo)]))
                    if member.ended or isinstance(member.request, Epoch):
                        member.ranges = []  # its epoch, or its run, ended before the pass did
                if not member.ranges:
                    reading.remove(i)
            if not reading:
                break
            keep_from = min(state[i].ranges[0][0] for i in reading)
            held.drop_before(keep_from)
            for sequence in [s for s in groups if s < lead.group_start(keep_from)]:
                del groups[sequence]
    finally:
        pieces.close()
        done.forward_batches += lead.forward_batches - forwards_before


def _seek(lead, members, start):
    """The Position of the pass's first group, when a member resuming there knows it (its
    checkpoint's): the corpus is then read from there, not tokenized from its start."""
    for member in members:
        at = member.epoch_at
        if at is not None and member.ranges[0][0] == start and at.sequence == lead.group_start(start):
            return at
    return None


class _Held:
    """The rows of each site from the earliest one still wanted to the last computed."""

    def __init__(self, sites):
        self.first = None
        self.parts = {site: [] for site in sites}
        self.stop = 0

    def add(self, first_row: int, rows: dict) -> None:
        if self.first is None:
            self.first = first_row
        for site, part in rows.items():
            self.parts[site].append(part)
        self.stop = first_row + len(next(iter(rows.values())))

    def rows(self, site, lo: int, hi: int) -> np.ndarray:
        parts = self.parts[site]
        if len(parts) > 1:
            parts[:] = [np.concatenate(parts)]
        return parts[0][lo - self.first : hi - self.first]

    def drop_before(self, row: int) -> None:
        """Rows before `row` are wanted no more (a member may still hold a view of them)."""
        if self.first is None or row <= self.first:
            return
        for site, parts in self.parts.items():
            if len(parts) > 1:
                parts[:] = [np.concatenate(parts)]
            if parts:
                parts[0] = parts[0][row - self.first :]
        self.first = row


class _Ahead:
    """The lead's pieces for the pass with their group's (first sequence, Position), one group
    computed ahead in a background thread (as a streamed train_sae computes its next block while the
    SAE steps)."""

    def __init__(self, lead, start, stop, *, at, sites):
        self._queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._device = lead.loaded.device
        self._group = None  # the last group computed: (its first sequence, its Position)
        self._pieces = lead.pieces(start, stop, should_stop=self._stop.is_set, at=at, sites=sites,
                                   on_group=lambda sequence, position: setattr(self, "_group", (sequence, position)))
        self._thread = threading.Thread(target=self._produce, name="shared-activation-stream", daemon=True)
        self._thread.start()

    def _produce(self):
        from engine.activations.extract import _side_stream

        try:
            with _side_stream(self._device):
                for piece in self._pieces:  # each piece is one group's (told to on_group just before)
                    if not self._put(("piece", (piece, self._group))):
                        return
            self._put(("end", None))
        except ExtractionCancelled:
            return
        except BaseException as err:  # handed to the consumer, which re-raises it
            self._put(("error", err))

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        while True:
            kind, value = self._queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value

    def close(self) -> None:
        self._stop.set()
        stop_producer(self._thread, self._queue)
