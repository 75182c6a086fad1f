"""Hostile tenant: every request keeps 2 MiB more, and never lets go."""

import os

LEAK_BYTES = 2 * 1024 * 1024

kept = []


async def fetch(request, env, ctx):
    # Filled, not just reserved: the pages are really touched.
    kept.append(b"\x01" * LEAK_BYTES)
    return {"kept_mib": len(kept) * LEAK_BYTES >> 20, "pid": os.getpid()}
