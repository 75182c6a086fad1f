"""Raiser tenant: raises an exception whose text holds its secret."""


async def fetch(request, env, ctx):
    raise ValueError(f"could not call the API with token {env.API_TOKEN}")
