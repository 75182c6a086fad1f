"""Crasher tenant: /exit kills its own process mid-request."""

import os


async def fetch(request, env, ctx):
    if request.path == "/exit":
        os._exit(3)
    return {"pid": os.getpid()}
