"""CPU-budget tenant: /burn spins for three seconds of CPU time."""

import os
import socket
import time


async def fetch(request, env, ctx):
    if request.path == "/burn":
        started = time.process_time()
        while time.process_time() - started < 3:
            pass
    if request.path == "/socket":
        try:
            socket.socket()
        except PermissionError as exc:
            return {"refused": str(exc)}
    return {"pid": os.getpid()}
