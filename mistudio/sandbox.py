"""Untrusted input is parsed in a child process with limits, never in the web process.

`run_limited("module:function", *args)` runs the function in a fresh interpreter (`python -m
mistudio.sandbox`, no Django, nothing inherited but the environment) under an address-space limit
(RLIMIT_AS), a CPU-time limit (RLIMIT_CPU) and a wall-clock timeout, and returns what it returned.
The arguments and the result travel as JSON; the child's environment holds no secret of the parent's. A child that crashes on a forged file, runs out of its
memory or its time, or raises is refused with a ServiceError (a 400) that says which; an error the
function raises on purpose (one of `expected`) keeps its own message. Killing the child loses
nothing: it only reads.

Settings: MISTUDIO_SANDBOX_MEMORY_BYTES, MISTUDIO_SANDBOX_CPU_S, MISTUDIO_SANDBOX_TIMEOUT_S.
"""
import importlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent

_DEFAULT_LIMITS = {"memory_bytes": 2 << 30, "cpu_s": 120, "timeout_s": 180}


class SandboxRefused(Exception):
    """The child was stopped by a limit, crashed, or raised something unexpected."""


class SandboxError(Exception):
    """The function raised one of the expected errors: `kind` and `message` are its own."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def limits() -> dict:
    """The limits from the settings, or the defaults where Django is not set up."""
    try:
        from django.conf import settings

        return {"memory_bytes": settings.SANDBOX_MEMORY_BYTES, "cpu_s": settings.SANDBOX_CPU_S,
                "timeout_s": settings.SANDBOX_TIMEOUT_S}
    except Exception:  # no Django settings: a script, a test of the engine
        return dict(_DEFAULT_LIMITS)


def run_limited(target: str, *args, expected: tuple[str, ...] = (), what: str = "the input", **kwargs):
    """target(*args, **kwargs) in a limited child process; its JSON-able result. `expected`: names
    of exception classes whose message is the answer (SandboxError); `what` names the input in a
    refusal ("'corpus.arrow'")."""
    bounds = limits()
    payload = json.dumps({"target": target, "args": args, "kwargs": kwargs, "limits": bounds})
    # The child limits itself before it reads anything (no preexec_fn: this process has threads).
    # Its environment holds none of this one's secrets (the key, the database's URL): what it reads
    # is a stranger's file.
    env = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen([sys.executable, "-m", "mistudio.sandbox"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, cwd=_ROOT, env=env, close_fds=True, start_new_session=True)
    try:
        out, err = child.communicate(payload.encode(), timeout=bounds["timeout_s"])
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise SandboxRefused(f"reading {what} took longer than {bounds['timeout_s']} s "
                             "(MISTUDIO_SANDBOX_TIMEOUT_S)") from None
    if child.returncode < 0:
        signum = -child.returncode
        if signum == signal.SIGXCPU or signum == signal.SIGKILL:
            raise SandboxRefused(f"reading {what} used more than {bounds['cpu_s']} s of CPU (MISTUDIO_SANDBOX_CPU_S)")
        raise SandboxRefused(f"reading {what} crashed the reader ({signal.Signals(signum).name}): the file is damaged "
                             "or forged")
    try:
        answer = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise SandboxRefused(f"reading {what} failed ({tail[0][:300]})") from None
    if "error" in answer:
        kind, message = answer["error"]["kind"], answer["error"]["message"]
        if kind == "MemoryError":
            raise SandboxRefused(f"reading {what} needed more than {bounds['memory_bytes'] >> 20} MiB "
                                 "(MISTUDIO_SANDBOX_MEMORY_BYTES)")
        if kind in expected:
            raise SandboxError(kind, message)
        raise SandboxRefused(f"reading {what} failed ({kind}: {message[:300]})")
    return answer["result"]


def _child() -> None:
    import resource

    request = json.loads(sys.stdin.read())
    bounds = request["limits"]
    resource.setrlimit(resource.RLIMIT_AS, (bounds["memory_bytes"], bounds["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_CPU, (bounds["cpu_s"], bounds["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    module, _, name = request["target"].partition(":")
    try:
        result = getattr(importlib.import_module(module), name)(*request["args"], **request["kwargs"])
        answer = {"result": result}
    except MemoryError:
        answer = {"error": {"kind": "MemoryError", "message": ""}}
    except Exception as exc:  # noqa: BLE001 (the parent decides what it was)
        answer = {"error": {"kind": type(exc).__name__, "message": str(exc)}}
    sys.stdout.write("\n" + json.dumps(answer) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    _child()
