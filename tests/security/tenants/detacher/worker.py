"""Hostile tenant: starts a process that would outlive its worker.

Each way ends in a child in a session of its own, which the dispatcher's
signal to the worker's process group would not reach.
"""

import ctypes
import os
import subprocess
import time

libc = ctypes.CDLL(None, use_errno=True)


def linger():
    """What the child would do: leave the worker's session, then stay."""
    os.setsid()
    time.sleep(60)


def fork_and_detach(fork):
    pid = fork()
    if pid == 0:
        try:
            linger()
        finally:
            os._exit(0)
    if pid < 0:
        return {"refused": f"libc fork: errno {ctypes.get_errno()}"}
    return {"succeeded": f"detached pid {pid}"}


def popen_new_session():
    child = subprocess.Popen(["/bin/sleep", "60"], start_new_session=True)
    return {"succeeded": f"detached pid {child.pid}"}


ATTACKS = {
    "/fork-setsid": lambda: fork_and_detach(os.fork),
    "/libc-fork-setsid": lambda: fork_and_detach(libc.fork),
    "/popen-new-session": popen_new_session,
}


async def fetch(request, env, ctx):
    if request.path not in ATTACKS:
        return {"pid": os.getpid()}
    try:
        return ATTACKS[request.path]()
    except OSError as exc:
        return {"refused": f"{type(exc).__name__}: {exc}"}
