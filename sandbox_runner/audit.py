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


# Audit events worth a note but not a refusal: a way around the hook, which
# the seccomp filter still stands behind.
NOTED_EVENTS = {
    "ctypes.dlopen": "loading a C library through ctypes",
}


class RefusalLog:
    """Collects one note per kind of refused call, for the runner to send."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.pending: list[str] = []

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        """The audit hook: note the first refusal of a kind, then refuse."""
        refused = REFUSED_EVENTS.get(event)
        if refused is not None:
            self.note_once(event, args, f"sandbox refused {event}", refused)
            raise PermissionError(f"the sandbox does not allow {refused} ({event})")
        noted = NOTED_EVENTS.get(event)
        if noted is not None:
            self.note_once(event, args, f"sandbox noted {event}", noted)

    def note_once(
        self, event: str, args: tuple[Any, ...], prefix: str, what: str
    ) -> None:
        if event in self.seen:
            return
        self.seen.add(event)
        detail = ", ".join(repr(arg)[:80] for arg in args[:3])
        self.pending.append(f"{prefix}({detail}): {what}")

    def take(self) -> list[str]:
        """The notes not sent yet."""
        notes, self.pending = self.pending, []
        return notes


def install() -> RefusalLog:
    """Install the hook for the rest of the process's life (it cannot go)."""
    refusals = RefusalLog()
    sys.addaudithook(refusals.hook)
    return refusals
