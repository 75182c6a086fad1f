"""Hostile tenant: ignores SIGTERM from import on, and blocks in fetch."""

import os
import signal
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)


async def fetch(request, env, ctx):
    if request.path == "/block":
        time.sleep(60)
    return {"pid": os.getpid()}
