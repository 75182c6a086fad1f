"""Echo tenant: reflects the request back so tests can see what arrived."""

import os

from sandbox_runner import Response


async def fetch(request, env, ctx):
    if request.path == "/headers":
        return {
            "pairs": request.headers.pairs(),
            "x_dup": request.headers.get_all("x-dup"),
        }
    if request.path == "/cookies":
        return Response(
            "two cookies", headers=[("set-cookie", "a=1"), ("set-cookie", "b=2")]
        )
    if request.path == "/env":
        return {"bindings": env.keys(), "environ": dict(os.environ), "cwd": os.getcwd()}
    if request.path == "/ignore-body":
        return "ignored"
    if request.path == "/pid":
        return {"pid": os.getpid()}
    if request.path == "/query":
        return {"query": request.query, "url": request.url, "method": request.method}
    return Response(request.body, headers={"content-type": "application/octet-stream"})
