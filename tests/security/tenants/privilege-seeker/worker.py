"""Hostile tenant: traces, kills, changes uid, makes namespaces and mounts.

The ctypes paths call libc directly, past the runner's audit hook, and
report the errno the kernel answered; the others use the os module. The
process attacked is ``?pid=``, by default the one that started this worker.
"""

import ctypes
import errno
import fcntl
import os
import signal

PTRACE_ATTACH = 16
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
FRAME_IN_FD = 60
F_SETSIG = 10
libc = ctypes.CDLL(None, use_errno=True)


def libc_call(name, *args):
    if getattr(libc, name)(*args) == -1:
        return {"refused": errno.errorcode[ctypes.get_errno()]}
    return {"succeeded": f"libc {name} returned"}


def signal_through_io(target, signum):
    """Have the kernel signal ``target`` whenever a frame arrives.

    F_SETOWN and O_ASYNC make the kernel send the signal, so no kill() is
    ever made; only the kernel's own permission checks stand in the way.
    """
    fcntl.fcntl(FRAME_IN_FD, F_SETSIG, signum)
    fcntl.fcntl(FRAME_IN_FD, fcntl.F_SETOWN, target)
    flags = fcntl.fcntl(FRAME_IN_FD, fcntl.F_GETFL)
    fcntl.fcntl(FRAME_IN_FD, fcntl.F_SETFL, flags | os.O_ASYNC)
    return {"armed": f"signal {signum} to pid {target} on the next frame"}


def os_call(call, *args):
    call(*args)
    return {"succeeded": f"{call.__name__} returned"}


def target_of(request):
    """The pid named by ``?pid=``: a number, or ``parent`` (the default)."""
    who = request.query.get("pid", ["parent"])[0]
    return os.getppid() if who == "parent" else int(who)


ATTACKS = {
    "ptrace": lambda pid: libc_call("ptrace", PTRACE_ATTACH, pid, None, None),
    "kill": lambda pid: os_call(os.kill, pid, signal.SIGKILL),
    "sigio": lambda pid: signal_through_io(pid, signal.SIGKILL),
    "kill-everyone": lambda pid: os_call(os.kill, -1, signal.SIGKILL),
    "setuid-root": lambda pid: os_call(os.setuid, 0),
    "unshare-net": lambda pid: libc_call("unshare", CLONE_NEWNET),
    "unshare-user": lambda pid: libc_call("unshare", CLONE_NEWUSER),
    "unshare-mount": lambda pid: libc_call("unshare", CLONE_NEWNS),
    "mount-tmpfs": lambda pid: libc_call(
        "mount", b"none", os.environ["TMPDIR"].encode(), b"tmpfs", 0, None
    ),
}


def peek_at_echo():
    """What reading the echo tenant's secrets gives: an error, or a leak."""
    try:
        with open("../echo/secrets.demo.toml") as secrets:
            return f"read: {secrets.read()}"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


async def fetch(request, env, ctx):
    if request.path == "/pid":
        return {"pid": os.getpid()}
    try:
        report = ATTACKS[request.path.strip("/")](target_of(request))
    except OSError as exc:
        report = {"refused": f"{type(exc).__name__}: {exc}"}
    report["echo_secrets"] = peek_at_echo()
    return report
