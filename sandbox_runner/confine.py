"""Steps that confine a worker before any tenant code runs.

The host starts a worker with three pipes: frames in on fd 0, frames out on
fd 1, and the tenant's log on fd 2. ``take_frame_channel`` first moves the
two frame pipes to private descriptors and points fd 0 at ``/dev/null`` and
fds 1 and 2 at the log pipe, so whatever tenant code prints - even raw
bytes written to fd 1 - lands in its log and never in the frame stream.

``confine`` then applies, in order: close every other inherited descriptor,
clear the environment, change to the tenant's folder, set resource limits.

Resource limits, and why each value:

- ``RLIMIT_AS`` from the tenant's ``memory_mb``: an allocation past it fails
  with ``MemoryError`` inside tenant code instead of growing the host's RSS.
- ``RLIMIT_NOFILE`` 64: the runner needs a handful; a tenant that leaks
  descriptors fails with ``OSError`` long before the host's table fills.
- ``RLIMIT_FSIZE`` 64 MiB: no single file write can fill the disk.
- ``RLIMIT_CORE`` 0: a crash never dumps a core holding secret values.

Limits are only ever lowered: even root cannot raise a hard limit here.

XXX: the seccomp allowlist, the privilege drop and Landlock are not applied
yet; the worker is a separate process with a clean environment and limits,
but it can still open sockets and read files its uid can read. The place for
them is the end of ``confine``, after the limits.
"""

from __future__ import annotations

import ctypes
import io
import os
import resource
import signal
import sys
from dataclasses import dataclass

PR_SET_PDEATHSIG = 1
OPEN_FILES_LIMIT = 64
FILE_SIZE_LIMIT_BYTES = 64 * 1024 * 1024

# Private descriptors for the frame pipes: high enough that tenant code
# opening files does not stumble on them, below the open-files limit.
FRAME_IN_FD = 60
FRAME_OUT_FD = 61


@dataclass(frozen=True)
class FrameChannel:
    """The worker's private ends of the two frame pipes."""

    read_fd: int
    write_fd: int
    parent_pid: int


def take_frame_channel() -> FrameChannel:
    """Move the frame pipes off fds 0/1 and send fds 1/2 to the log pipe."""
    os.dup2(0, FRAME_IN_FD, inheritable=False)
    os.dup2(1, FRAME_OUT_FD, inheritable=False)

    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)

    sys.stdout = _line_writer(1)
    sys.stderr = _line_writer(2)
    return FrameChannel(FRAME_IN_FD, FRAME_OUT_FD, os.getppid())


def _line_writer(fd: int) -> io.TextIOWrapper:
    stream = open(fd, "wb", buffering=0, closefd=False)  # noqa: SIM115
    return io.TextIOWrapper(
        stream, encoding="utf-8", errors="backslashreplace", line_buffering=True
    )


def confine(channel: FrameChannel, tenant_dir: str, memory_mb: int) -> None:
    """Apply every confinement step this worker supports, in order."""
    die_with_parent(channel.parent_pid)
    close_inherited_fds(keep=(0, 1, 2, channel.read_fd, channel.write_fd))
    os.environ.clear()
    os.chdir(tenant_dir)
    set_resource_limits(memory_mb)


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this worker when the dispatcher dies.

    A worker notices a dispatcher that exited cleanly by the end of its
    frame pipe, but one stuck in a CPU loop never reads it and would outlive
    a dispatcher killed with SIGKILL.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:
        # The parent died before the request was made: nobody will ask.
        os._exit(1)


def close_inherited_fds(keep: tuple[int, ...]) -> None:
    """Close every descriptor but ``keep``: nothing leaks in from the host."""
    highest = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    start = 0
    for fd in [*sorted(keep), highest]:
        # Only ever a non-empty range: os.closerange(0, 0) becomes
        # close_range(0, ~0) on CPython 3.11 and closes every descriptor.
        if start < fd:
            os.closerange(start, fd)
        start = fd + 1


def set_resource_limits(memory_mb: int) -> None:
    """Lower the worker's resource limits; see the module note for values."""
    lower_limit(resource.RLIMIT_AS, memory_mb * 1024 * 1024)
    lower_limit(resource.RLIMIT_NOFILE, OPEN_FILES_LIMIT)
    lower_limit(resource.RLIMIT_FSIZE, FILE_SIZE_LIMIT_BYTES)
    lower_limit(resource.RLIMIT_CORE, 0)


def lower_limit(which: int, value: int) -> None:
    """Set soft and hard limit to ``value``, never above the current hard."""
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))
