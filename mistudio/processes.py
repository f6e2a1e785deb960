"""Whether a process lives on this host, for the judges of a worker's death (the crash-recovery
and lease sweeps, a DDP rank watching its worker) and for the worker stopping its ranks. psutil
asks the kernel the same way on Linux, macOS and the BSDs."""
import psutil


def pid_alive(pid, *, zombie_counts: bool = True) -> bool:
    """Whether a process with this pid lives on this host. A zombie (exited, not yet reaped by its
    parent) counts unless `zombie_counts` is False: a parent waiting for its children to exit
    must not wait on one that only waits to be reaped."""
    if not pid or pid < 0:  # 0 and negatives name process groups to the kernel, never one process
        return False
    if zombie_counts:
        return psutil.pid_exists(pid)
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:  # ZombieProcess is one: where a zombie cannot be asked, it is one
        return False
    except psutil.AccessDenied:  # another user's process, where its state is hidden: it exists
        return True
