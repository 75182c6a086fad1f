"""Hostile tenant: looks for files and folders left open by the host.

An open descriptor is a way past every path check: whatever it points
at can be read through it. A worker should hold only its pipes, its
event loop's own descriptors, and ``/dev/null``.
"""

import os
import stat

HIGHEST_FD = 1024


def open_descriptors():
    found = {}
    for fd in range(HIGHEST_FD):
        try:
            found[fd] = os.fstat(fd)
        except OSError:
            continue
    return found


async def fetch(request, env, ctx):
    found = open_descriptors()
    leaked = {
        fd: oct(info.st_mode)
        for fd, info in found.items()
        if stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)
    }
    if leaked:
        return {"succeeded": leaked}
    return {"refused": "no file or folder open", "open": sorted(found)}
