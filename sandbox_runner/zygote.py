"""The fork server: an interpreter with the runner imported, forking workers.

Starting a fresh interpreter and importing msgspec, asyncio and the runner
costs 40-90 ms; forking a process that has already done so costs a few. The
dispatcher starts one zygote and asks it for workers over a Unix
``SOCK_SEQPACKET`` socket (message boundaries kept, descriptors passable):

- host to zygote: ``spawn <token>`` with three descriptors attached - the
  worker's frames-in, frames-out and log pipe ends;
- zygote to host: ``spawned <token> <pid>``, and later
  ``exited <pid> <returncode>`` (negative: killed by that signal); or
  ``failed <token>`` when it could not fork (out of processes, say);
- host to zygote ``ping <token>``, answered ``pong <token>``: the host's
  readiness check, which tells a hung zygote from one that is up.

The child puts the three descriptors on fds 0, 1 and 2, leads a new
process group, and runs exactly what ``python -m sandbox_runner`` runs, so
a forked worker confines itself in the same steps as a spawned one.

The zygote runs tenant code never. It freezes its heap before serving, so
that workers share its pages instead of copying them on the first
collection.
"""

from __future__ import annotations

import array
import gc
import os
import selectors
import signal
import socket
import sys

from sandbox_runner import frames, serve
from sandbox_runner.confine import die_with_parent, interpreter_paths

MAX_MESSAGE_BYTES = 256
FDS_PER_WORKER = 3


def main() -> None:
    """Entry point of ``python -m sandbox_runner.zygote CONTROL_FD``."""
    parent = os.getppid()
    control = socket.socket(fileno=int(sys.argv[1]))
    die_with_parent(parent)
    wakeup_read, wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wakeup_write)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)

    interpreter_paths()  # the same for every worker: computed once, here
    gc.collect()
    gc.freeze()
    control.send(b"ready")
    serve_spawns(control, wakeup_read)


def serve_spawns(control: socket.socket, wakeup_read: int) -> None:
    """Fork on request and report exits, until the host goes away."""
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    selector.register(wakeup_read, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj is control:
                if not handle_request(control, wakeup_read):
                    return
            else:
                drain(wakeup_read)
                report_exits(control)


def handle_request(control: socket.socket, wakeup_read: int) -> bool:
    """Answer a ``ping`` or fork for a ``spawn``; False once the host is gone."""
    fds = array.array("i")
    message, ancillary, _, _ = control.recvmsg(
        MAX_MESSAGE_BYTES, socket.CMSG_SPACE(FDS_PER_WORKER * fds.itemsize)
    )
    if not message:
        return False
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])

    request, _, token = message.partition(b" ")
    if request == b"ping":
        close_all(fds)
        control.send(b"pong " + token)
    elif len(fds) != FDS_PER_WORKER:
        close_all(fds)
        control.send(b"failed " + token)
    else:
        control.send(fork_worker(fds, token, control, wakeup_read))
    return True


def fork_worker(
    fds: array.array[int], token: bytes, control: socket.socket, wakeup_read: int
) -> bytes:
    """Fork a worker on ``fds``; the reply for the host."""
    try:
        pid = os.fork()
    except OSError:  # out of processes or memory: the host is told, we go on
        close_all(fds)
        return b"failed " + token
    if pid == 0:
        become_worker(list(fds), control, wakeup_read)
    close_all(fds)
    return b"spawned %s %d" % (token, pid)


def close_all(fds: array.array[int]) -> None:
    for fd in fds:
        os.close(fd)


def become_worker(fds: list[int], control: socket.socket, wakeup_read: int) -> None:
    """In the child: take the pipes as fds 0-2 and run the worker; never returns."""
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        control.close()
        os.close(wakeup_read)
        serve.main()
    except BaseException:  # noqa: BLE001 - a child must never return here
        os._exit(frames.EXIT_CONFINEMENT_FAILED)
    os._exit(0)


def drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def report_exits(control: socket.socket) -> None:
    """Reap every child that has exited and tell the host its exit code."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        control.send(b"exited %d %d" % (pid, code))


if __name__ == "__main__":
    main()
