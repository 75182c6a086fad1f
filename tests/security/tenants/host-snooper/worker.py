"""Hostile tenant: reads host files that hold other processes' secrets.

``/<file>?pid=<who>`` reads ``/proc/<pid>/<file>``: ``who`` is a pid, or
``parent`` for the process that started this worker (the dispatcher, or
its fork server). ``/etc/<name>`` reads a file from ``/etc``.
"""

import os


def pid_of(who):
    return os.getppid() if who == "parent" else int(who)


def path_of(request):
    name = request.path.strip("/")
    if name.startswith("etc/"):
        return f"/{name}"
    who = request.query.get("pid", ["parent"])[0]
    return f"/proc/{pid_of(who)}/{name}"


def read(path):
    try:
        with open(path, "rb") as target:
            return {"succeeded": target.read(4096).decode("latin-1")}
    except OSError as exc:
        return {"refused": f"{type(exc).__name__}: {exc}"}


async def fetch(request, env, ctx):
    return read(path_of(request))
