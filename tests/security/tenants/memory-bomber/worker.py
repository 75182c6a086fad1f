"""Hostile tenant: asks for more memory than ``memory_mb`` allows.

``/huge`` makes one 10 GB allocation; ``/many-small`` allocates 4 KiB
blocks until the allocator says no. Both drop what they got before
answering, so the same worker can serve ``/pid`` next.
"""

import os

BLOCK_BYTES = 4096


def allocate_huge():
    try:
        block = bytearray(10**10)
    except MemoryError as exc:
        return {"refused": f"MemoryError: {exc}"}
    return {"succeeded": f"allocated {len(block)} bytes"}


def allocate_many_small():
    blocks = []
    try:
        while True:
            blocks.append(b"\x01" * BLOCK_BYTES)
    except MemoryError:
        count = len(blocks)
        blocks.clear()
    return {"refused": "MemoryError", "allocated_mib": count * BLOCK_BYTES >> 20}


async def fetch(request, env, ctx):
    if request.path == "/huge":
        return allocate_huge()
    if request.path == "/many-small":
        return allocate_many_small()
    return {"pid": os.getpid()}
