"""Stopping a gpu_ids job's torchrun reaches every process below it: a rank runs in a session of its
own, so a signal to torchrun's process group misses it, and one that ignores SIGTERM gets SIGKILL."""
import os
import signal
import subprocess
import time

from mistudio.processes import pid_alive
from training.worker.ddp import _descendants, _stop

# torchrun's part: start a "rank" in a new session that ignores SIGTERM, say its pid, wait for it.
_TREE = """setsid sh -c 'trap "" TERM; exec sleep 60' & echo $!; wait"""


def test_a_rank_in_its_own_session_that_ignores_sigterm_is_found_and_killed():
    torchrun = subprocess.Popen(["sh", "-c", _TREE], stdout=subprocess.PIPE, text=True)
    rank = int(torchrun.stdout.readline())
    try:
        assert rank in _descendants(torchrun.pid)
        _stop(torchrun, grace_s=0.2)
        assert torchrun.returncode is not None
        deadline = time.monotonic() + 5  # SIGKILL is delivered, not waited for
        while pid_alive(rank, zombie_counts=False) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not pid_alive(rank, zombie_counts=False)
    finally:
        if pid_alive(rank, zombie_counts=False):
            os.kill(rank, signal.SIGKILL)
        torchrun.stdout.close()


def test_a_process_that_has_exited_has_no_descendants(dead_pid):
    assert _descendants(dead_pid) == set()
