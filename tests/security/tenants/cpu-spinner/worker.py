"""Hostile tenant: spins on the CPU and never answers.

``/python-loop`` spins in bytecode; ``/hash-loop`` in hashlib's C code
(which lets go of the GIL); ``/regex-loop`` in the regex engine's C code
(which holds it, so not even a Python signal handler would run).
"""

import hashlib
import os
import re

HASHED_BYTES = 32 * 1024 * 1024


def spin_in_python():
    while True:
        pass


def spin_in_hashlib():
    data = b"\x01" * HASHED_BYTES
    while True:
        hashlib.sha256(data).digest()


def spin_in_regex():
    # Catastrophic backtracking: 2**40 ways to fail the match.
    return re.match(r"(a+)+$", "a" * 40 + "b")


SPINS = {
    "/python-loop": spin_in_python,
    "/hash-loop": spin_in_hashlib,
    "/regex-loop": spin_in_regex,
}


async def fetch(request, env, ctx):
    if request.path in SPINS:
        SPINS[request.path]()
        return {"succeeded": "the spin ended"}
    return {"pid": os.getpid()}
