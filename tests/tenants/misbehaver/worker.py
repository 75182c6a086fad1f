"""Misbehaving tenant: each path is one way tenant code can go wrong."""

import asyncio
import os
import time

from sandbox_runner import Response


class NotAnException(BaseException):
    pass


def bad_status():
    response = Response("x")
    response.status = 200.5
    return response


def body_replaced():
    response = Response("x")
    response.body = [1, 2, 3]
    return response


async def awaits_cancelled_task():
    task = asyncio.create_task(asyncio.sleep(10))
    await asyncio.sleep(0)
    task.cancel()
    await task


def fork_a_sleeper():
    child = os.fork()
    if child == 0:
        time.sleep(60)
        os._exit(0)
    return {"child": child}


ROUTES = {
    "/no-content-with-body": lambda: Response(
        b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged", status=204
    ),
    "/newline-in-header-name": lambda: Response("x", headers=[("x-a\n", "v")]),
    "/control-in-header-value": lambda: Response("x", headers=[("x-a", "a\x01b")]),
    "/non-latin1-header": lambda: Response("x", headers=[("x-a", "\u20acuro")]),
    "/float-status": bad_status,
    "/list-body": body_replaced,
    "/fork": fork_a_sleeper,
    "/pid": lambda: {"pid": os.getpid()},
}


async def fetch(request, env, ctx):
    path = request.path
    if path in ROUTES:
        return ROUTES[path]()
    if path == "/raise-cancelled":
        raise asyncio.CancelledError()
    if path == "/await-cancelled":
        await awaits_cancelled_task()
    if path == "/exit":
        os._exit(3)
    if path == "/system-exit":
        raise SystemExit(0)
    if path == "/base-exception":
        raise NotAnException()
    if path == "/flood-log":
        os.write(1, b"\n" * 2_000_000)
        return {"flooded": True}
    if path == "/close-frame-pipe":
        os.close(60)
        return {"closed": True}
    return Response("unknown path", status=404)
