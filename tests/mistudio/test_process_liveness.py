"""Whether a worker or a rank still lives: the recovery checks count a process that exited but is not
reaped yet (a zombie) as alive, a parent waiting for its children does not."""
import os
import subprocess

from mistudio.processes import pid_alive


def test_this_process_lives_and_one_that_exited_does_not(dead_pid):
    assert pid_alive(os.getpid()) and pid_alive(os.getpid(), zombie_counts=False)
    assert not pid_alive(dead_pid) and not pid_alive(dead_pid, zombie_counts=False)
    assert not pid_alive(None) and not pid_alive(0)


def test_a_zombie_counts_as_alive_unless_asked_not_to():
    child = subprocess.Popen(["true"])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, left unreaped
    assert pid_alive(child.pid)
    assert not pid_alive(child.pid, zombie_counts=False)
    child.wait()
    assert not pid_alive(child.pid)
