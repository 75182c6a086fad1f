"""Slowpoke tenant: /await and /block outlast its slowlog_ms, / does not.

/stuck blocks past its time limit. The slow lines hold the tenant's secret
value, which its logged stacks must not; fetch keeps it in a local too.
"""

import asyncio
import time


async def fetch(request, env, ctx):
    token = env.API_TOKEN
    if request.path == "/await":
        await wait_for_upstream(token)
    elif request.path == "/block":
        crunch_numbers(token)
    elif request.path == "/stuck":
        time.sleep(5)
    return {"ok": True}


async def wait_for_upstream(token):
    await asyncio.sleep(0.5)  # as if calling with sk-live-slowpoke-do-not-leak


def crunch_numbers(token):
    time.sleep(0.5)  # as if hashing sk-live-slowpoke-do-not-leak
