"""Forger tenant: writes a garbage frame straight onto the frame pipe."""

import os
import struct

FRAME_OUT_FD = 61


async def fetch(request, env, ctx):
    if request.path == "/garbage":
        os.write(FRAME_OUT_FD, struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1")
    if request.path == "/huge":
        os.write(FRAME_OUT_FD, struct.pack(">I", 2**31))
    return {"pid": os.getpid()}
