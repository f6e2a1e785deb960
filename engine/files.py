"""Files and folders that appear whole or not at all: written as `<name>.partial`, then renamed.

A rename within one folder is atomic, so whoever reads the final name (a worker resuming after a
crash, the API, a second process) finds the complete file or none; a write that fails removes
its partial. As a context manager each yields the partial path to write and renames it on
success; `commit()` and `discard()` do the same by hand for a file that outlives one block
(an extraction written by a thread while a trainer reads it).
"""
import glob
import os
import shutil
from pathlib import Path


class AtomicFile:
    """`own`: the partial file is this writer's alone (`<name>.partial-<pid>-<random>`), and the
    partials other writers left under the same final name go when it starts: two processes writing
    one file (a run resumed elsewhere while a paused one wakes, engine.activations.extract) never write into
    one partial, the newer removes the older's (whose commit then fails: it is not found), and a
    killed writer's partial does not outlive the next try."""

    def __init__(self, path, *, own: bool = False):
        self.path = Path(path)
        suffix = f".partial-{os.getpid()}-{os.urandom(4).hex()}" if own else ".partial"
        self.partial = self.path.with_name(self.path.name + suffix)
        if own:
            for other in self.path.parent.glob(glob.escape(self.path.name) + ".partial*"):
                other.unlink(missing_ok=True)

    def commit(self) -> None:
        os.replace(self.partial, self.path)

    def discard(self) -> None:
        self.partial.unlink(missing_ok=True)

    def __enter__(self) -> Path:
        return self.partial

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            try:
                self.commit()
                return
            except BaseException:
                self.discard()
                raise
        self.discard()


class AtomicFolder(AtomicFile):
    """The partial folder is created empty (a stale one from a crash goes first); committing
    replaces a folder already under the final name."""

    def __init__(self, folder):
        super().__init__(folder)
        shutil.rmtree(self.partial, ignore_errors=True)
        self.partial.mkdir(parents=True)

    def commit(self) -> None:
        if not self.path.exists():
            self.partial.rename(self.path)
            return
        old = self.path.with_name(self.path.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        self.path.rename(old)
        self.partial.rename(self.path)
        shutil.rmtree(old)

    def discard(self) -> None:
        shutil.rmtree(self.partial, ignore_errors=True)
