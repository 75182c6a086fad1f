async def fetch(request, env, ctx):
    return {"never": "served"}
