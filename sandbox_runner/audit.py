"""Name what tenant code tried that the sandbox refuses, for the operator.

The seccomp filter answers a refused system call with EPERM, and the kernel
tells nobody. CPython's audit hooks see the Python-level calls that lead to
those system calls, with their arguments, so the runner reports the first
of each kind in the tenant's log and refuses it right there with a
``PermissionError`` that says why (``os.system`` would otherwise just return
127). The hook is a courtesy, not a barrier: code that reaches the kernel
another way (``ctypes``, a C extension) meets the filter all the same.
"""

from __future__ import annotations

import sys
from typing import Any

# Audit events that always end in a refused system call.
REFUSED_EVENTS = {
    "socket.__new__": "creating a socket",
    "os.system": "running a shell command",
    "os.exec": "executing a program",
    "os.posix_spawn": "starting a process",
    "os.spawn": "starting a process",
    "os.fork": "forking a process",
    "os.forkpty": "forking a process",
    "subprocess.Popen": "starting a process",
    "os.kill": "sending a signal",
    "os.killpg": "sending a signal",
}


class RefusalLog:
    """Collects one note per kind of refused call, for the runner to send."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.pending: list[str] = []

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        """The audit hook: note the first refusal of a kind, then refuse."""
        what = REFUSED_EVENTS.get(event)
        if what is None:
            return
        if event not in self.seen:
            self.seen.add(event)
            detail = ", ".join(repr(arg)[:80] for arg in args[:3])
            self.pending.append(f"sandbox refused {event}({detail}): {what}")
        raise PermissionError(f"the sandbox does not allow {what} ({event})")

    def take(self) -> list[str]:
        """The notes not sent yet."""
        notes, self.pending = self.pending, []
        return notes


def install() -> RefusalLog:
    """Install the hook for the rest of the process's life (it cannot go)."""
    refusals = RefusalLog()
    sys.addaudithook(refusals.hook)
    return refusals
