"""What the sandbox tests run in its child process (mistudio.sandbox targets): a reader that
crashes, one that allocates without end, one that spins, one that sleeps, one that answers."""
import ctypes
import time


def crash():
    ctypes.string_at(0)  # reads address 0: SIGSEGV


def allocate():
    blocks = []
    while True:
        blocks.append(bytearray(64 << 20))


def spin():
    while True:
        pass


def sleep():
    time.sleep(3600)


def answer(value):
    return {"echo": value}


def nested(depth):
    import json

    return len(json.loads("[" * depth + "]" * depth))


def environment():
    import os

    return sorted(os.environ)
