"""Whether a process lives on this host, for the judges of a worker's death (the crash-recovery
and lease sweeps, a DDP rank watching its worker) and for the worker stopping its ranks."""
import os


def pid_alive(pid, *, zombie_counts: bool = True) -> bool:
    """Whether a process with this pid lives on this host. A zombie (exited, not yet reaped by its
    parent) counts unless `zombie_counts` is False: a parent waiting for its children to exit
    must not wait on one that only waits to be reaped."""
    if not pid:
        return False
    if not zombie_counts:
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                return stat.read().rpartition(b")")[2].split()[0] not in (b"Z", b"X")
        except FileNotFoundError:
            return False
        except OSError:  # no /proc: ask the kernel, which cannot tell a zombie
            pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
