"""Limited tenant: answers with its pid, so tests see who served."""

import os


async def fetch(request, env, ctx):
    return {"pid": os.getpid()}
