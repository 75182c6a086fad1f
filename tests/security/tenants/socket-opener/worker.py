"""Hostile tenant: opens sockets, which a worker must never have.

``/python/<family>`` goes through the ``socket`` module (the audit hook's
turn first); ``/libc/<family>`` calls libc's ``socket`` through ctypes, so
only the kernel's seccomp filter stands in the way.
"""

import ctypes
import errno
import os
import socket

FAMILIES = {
    "inet": (socket.AF_INET, socket.SOCK_STREAM),
    "inet6": (socket.AF_INET6, socket.SOCK_STREAM),
    "unix": (socket.AF_UNIX, socket.SOCK_STREAM),
    "netlink": (socket.AF_NETLINK, socket.SOCK_RAW),
    "packet": (socket.AF_PACKET, socket.SOCK_RAW),
}
libc = ctypes.CDLL(None, use_errno=True)


def python_socket(name):
    if name == "socketpair":
        left, right = socket.socketpair()
        left.close()
        right.close()
        return {"succeeded": "socketpair"}
    family, kind = FAMILIES[name]
    with socket.socket(family, kind):
        return {"succeeded": f"socket {name}"}


def libc_socket(name):
    if name == "socketpair":
        pair = (ctypes.c_int * 2)()
        result = libc.socketpair(socket.AF_UNIX, socket.SOCK_STREAM, 0, pair)
    else:
        result = libc.socket(*FAMILIES[name], 0)
    if result == -1:
        return {"refused": errno.errorcode[ctypes.get_errno()]}
    if name != "socketpair":
        os.close(result)
    return {"succeeded": f"libc socket {name}"}


def peek_at_echo():
    """What reading the echo tenant's secrets gives: an error, or a leak."""
    try:
        with open("../echo/secrets.demo.toml") as secrets:
            return f"read: {secrets.read()}"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


async def fetch(request, env, ctx):
    _, via, name = request.path.split("/")
    try:
        report = python_socket(name) if via == "python" else libc_socket(name)
    except OSError as exc:
        report = {"refused": f"{type(exc).__name__}: {exc}"}
    report["echo_secrets"] = peek_at_echo()
    return report
