"""Hostile tenant: reports what randomises its interpreter.

Each is a secret of the process: another tenant's worker that shared one
would be open to inputs chosen with it in hand - dictionary keys that all
collide (the ``str`` and ``bytes`` hash key), predictable ``random``
values, or, for native code, addresses known in advance (ASLR).
"""

import ctypes
import os
import random

libc = ctypes.CDLL(None)


async def fetch(request, env, ctx):
    return {
        "str_hash": hash("switchyard hash probe"),
        "bytes_hash": hash(b"switchyard hash probe"),
        "random": random.getrandbits(64),
        "interpreter_address": id(None),
        "libc_address": ctypes.cast(libc.malloc, ctypes.c_void_p).value,
        "pid": os.getpid(),
    }
