"""Sleeper tenant: /sleep outlasts its 500 ms time limit."""

import asyncio
import os


async def fetch(request, env, ctx):
    if request.path == "/sleep":
        await asyncio.sleep(30)
    return {"pid": os.getpid()}
