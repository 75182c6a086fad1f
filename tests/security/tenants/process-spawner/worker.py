"""Hostile tenant: starts programs and forks, each path one way to try.

Whatever a call returns is judged here: a child that ran, or a fork that
returned a pid, is reported as ``succeeded``; an exception, or a shell
that could not start (exit status 127), as ``refused``.
"""

import ctypes
import os
import subprocess

FORK_BOMB_ROUNDS = 200
libc = ctypes.CDLL(None, use_errno=True)


def run_shell():
    status = os.system("true")
    if status == 0:
        return {"succeeded": "os.system ran a shell command"}
    return {"refused": f"exit status {status}"}


def run_libc_system():
    status = libc.system(b"/bin/true")
    if status == 0:
        return {"succeeded": "libc system() ran a shell command"}
    return {"refused": f"exit status {status}"}


def run_subprocess():
    done = subprocess.run(["/bin/true"], check=False)
    return {"succeeded": f"/bin/true exited {done.returncode}"}


def exec_program():
    os.execv("/bin/true", ["/bin/true"])


def spawn_program():
    pid = os.posix_spawn("/bin/true", ["/bin/true"], {})
    os.waitpid(pid, 0)
    return {"succeeded": f"posix_spawn started pid {pid}"}


def fork_once(fork=os.fork):
    pid = fork()
    if pid == 0:
        os._exit(0)
    if pid < 0:
        return None
    os.waitpid(pid, 0)
    return pid


def fork_bomb():
    """Fork in a loop, through Python and straight through libc."""
    children, refusals = [], []
    for _ in range(FORK_BOMB_ROUNDS):
        for fork in (os.fork, libc.fork):
            try:
                pid = fork_once(fork)
            except OSError as exc:
                refusals.append(f"{type(exc).__name__}: {exc}")
                continue
            if pid is None:
                refusals.append(f"libc fork: errno {ctypes.get_errno()}")
            else:
                children.append(pid)
    if children:
        return {"succeeded": f"{len(children)} forks"}
    return {"refused": refusals[0], "attempts": len(refusals)}


def fork_process():
    return {"succeeded": f"forked pid {fork_once()}"}


ATTACKS = {
    "/system": run_shell,
    "/libc-system": run_libc_system,
    "/subprocess": run_subprocess,
    "/execv": exec_program,
    "/posix-spawn": spawn_program,
    "/fork": fork_process,
    "/fork-bomb": fork_bomb,
}


def peek_at_echo():
    """What reading the echo tenant's secrets gives: an error, or a leak."""
    try:
        with open("../echo/secrets.demo.toml") as secrets:
            return f"read: {secrets.read()}"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


async def fetch(request, env, ctx):
    try:
        report = ATTACKS[request.path]()
    except OSError as exc:
        report = {"refused": f"{type(exc).__name__}: {exc}"}
    report["echo_secrets"] = peek_at_echo()
    return report
