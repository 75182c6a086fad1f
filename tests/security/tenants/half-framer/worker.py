"""Hostile tenant: announces a 100-byte frame, sends 10 bytes, then sleeps.

The host's frame reader is left waiting for the other 90 bytes, and the
worker holds the request well past its time limit.
"""

import os
import struct
import time

FRAME_OUT_FD = 61


async def fetch(request, env, ctx):
    if request.path == "/half-frame":
        os.write(FRAME_OUT_FD, struct.pack(">I", 100) + b"\x85" + b"\x00" * 9)
        time.sleep(30)
    return {"pid": os.getpid()}
