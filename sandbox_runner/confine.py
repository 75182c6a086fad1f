"""Steps that confine a worker before any tenant code runs.

The host starts a worker with three pipes: frames in on fd 0, frames out on
fd 1, and the tenant's log on fd 2. ``take_frame_channel`` first moves the
two frame pipes to private descriptors and points fd 0 at ``/dev/null`` and
fds 1 and 2 at the log pipe, so whatever tenant code prints - even raw
bytes written to fd 1 - lands in its log and never in the frame stream.

``confine`` then applies, in this order, each step narrowing what the next
may do:

1. die with the dispatcher (``PR_SET_PDEATHSIG``);
2. close every other inherited descriptor;
3. clear the environment;
4. as root: a private mount namespace, the scratch tmpfs, and the
   interpreter made reachable for an unprivileged uid (``filesystem.py``);
5. change to the tenant's folder;
6. resource limits (below);
7. as root: drop to the tenant's own uid, not dumpable;
8. ``PR_SET_NO_NEW_PRIVS``;
9. Landlock: read-only access to the interpreter and the tenant's folder,
   read-write to its scratch folder, no TCP, no signals or abstract
   sockets beyond its own process (``landlock.py``).

The seccomp filter (``seccomp.py``) comes last, from ``apply_syscall_filter``,
once the caller has created its event loop: the loop's self-pipe is a
``socketpair``, which the filter refuses.

Resource limits, and why each value:

- ``RLIMIT_AS`` from the tenant's ``memory_mb``: an allocation past it fails
  with ``MemoryError`` inside tenant code instead of growing the host's RSS.
- ``RLIMIT_NOFILE`` 64: the runner needs a handful; a tenant that leaks
  descriptors fails with ``OSError`` long before the host's table fills.
- ``RLIMIT_FSIZE`` 64 MiB: no single file write can fill the disk.
- ``RLIMIT_CORE`` 0: a crash never dumps a core holding secret values.
- ``RLIMIT_CPU`` from ``cpu_seconds``: a lifetime budget of the worker, not
  a per-request limit (the dispatcher's wall clock is that); a worker that
  spends it is killed and replaced.
- ``RLIMIT_NPROC`` 64 once the worker has a uid of its own: threads count
  against it (forks are refused outright by seccomp). With the
  dispatcher's uid it would count the dispatcher's processes too.

Limits are only ever lowered: even root cannot raise a hard limit here.
Each layer the kernel lacks is skipped, and the worker reports the layers it
has in its Ready frame.
"""

from __future__ import annotations

import ctypes
import functools
import io
import os
import resource
import signal
import sys
from dataclasses import dataclass

from sandbox_runner import landlock, seccomp
from sandbox_runner.filesystem import (
    drop_privileges,
    enter_private_mount_namespace,
    expose_to_others,
    mount_scratch,
)
from sandbox_runner.frames import Boot

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
OPEN_FILES_LIMIT = 64
PROCESS_LIMIT = 64
FILE_SIZE_LIMIT_BYTES = 64 * 1024 * 1024

# System files any program may read: shared libraries the interpreter's
# extension modules load, and time zone data. Nothing here is a secret.
SYSTEM_READ_PATHS = (
    "/usr",
    "/lib",
    "/lib64",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/dev/urandom",
)

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


def confine(channel: FrameChannel, boot: Boot) -> list[str]:
    """Apply steps 1-9 of the module note; return the layers now active."""
    layers = ["rlimits"]
    die_with_parent(channel.parent_pid)
    close_inherited_fds(keep=(0, 1, 2, channel.read_fd, channel.write_fd))
    os.environ.clear()

    uid = boot.uid if os.geteuid() == 0 else None
    readable = paths_to_read(boot)
    if uid is not None:
        layers += isolate_filesystem(boot, uid, readable)
    os.chdir(boot.tenant_dir)
    os.environ["TMPDIR"] = boot.scratch_dir
    set_resource_limits(boot, own_uid=uid is not None)

    if uid is not None:
        drop_privileges(uid)
        set_not_dumpable()
        # The kernel clears the parent-death signal on a change of uid.
        die_with_parent(channel.parent_pid)
        layers.append(f"uid {uid}")
    set_no_new_privs()
    layers += restrict_paths(boot, readable)
    return layers


def isolate_filesystem(boot: Boot, uid: int, readable: list[str]) -> list[str]:
    """Private mounts: scratch tmpfs, interpreter reachable after the drop."""
    enter_private_mount_namespace()
    covered = expose_to_others([*readable, boot.scratch_dir])
    mount_scratch(boot.scratch_dir, uid)
    return ["mount namespace", *(f"covered {path}" for path in covered)]


def paths_to_read(boot: Boot) -> list[str]:
    """What the worker reads from: interpreter, libraries, its folder."""
    return [*interpreter_paths(), boot.tenant_dir]


@functools.cache
def interpreter_paths() -> list[str]:
    """The interpreter's and the runner's folders that exist.

    The same for every worker: the zygote computes it once before forking.
    """
    import sandbox_runner

    runner = os.path.dirname(os.path.abspath(sandbox_runner.__file__))
    wanted = [sys.base_prefix, sys.prefix, *sys.path, runner]
    return [path for path in dict.fromkeys(wanted) if path and os.path.exists(path)]


def restrict_paths(boot: Boot, readable: list[str]) -> list[str]:
    """Apply Landlock; an empty list when the kernel has none."""
    result = landlock.restrict_self(
        read_only=[*readable, *SYSTEM_READ_PATHS],
        read_write=[boot.scratch_dir, os.devnull],
    )
    if not result.abi:
        return []
    return [f"landlock v{result.abi} ({', '.join(result.layers)})"]


def apply_syscall_filter(program: bytes) -> str:
    """Load the seccomp filter; the last step, after the event loop exists."""
    seccomp.load_program(program)
    return "seccomp"


def set_no_new_privs() -> None:
    """No exec can ever grant privileges again (and seccomp requires it)."""
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")


def set_not_dumpable() -> None:
    """Other processes of this uid cannot ptrace or read /proc/<pid>/mem."""
    _prctl(PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE")


def _prctl(option: int, value: int, name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({name}) failed")


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this worker when the dispatcher dies.

    A worker notices a dispatcher that exited cleanly by the end of its
    frame pipe, but one stuck in a CPU loop never reads it and would outlive
    a dispatcher killed with SIGKILL.
    """
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, "PR_SET_PDEATHSIG")
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


def set_resource_limits(boot: Boot, own_uid: bool) -> None:
    """Lower the worker's resource limits; see the module note for values."""
    lower_limit(resource.RLIMIT_AS, boot.memory_mb * 1024 * 1024)
    lower_limit(resource.RLIMIT_NOFILE, OPEN_FILES_LIMIT)
    lower_limit(resource.RLIMIT_FSIZE, FILE_SIZE_LIMIT_BYTES)
    lower_limit(resource.RLIMIT_CORE, 0)
    # Soft then hard: SIGXCPU first, SIGKILL if it is ignored.
    lower_limit(resource.RLIMIT_CPU, boot.cpu_seconds, boot.cpu_seconds + 5)
    if own_uid:
        lower_limit(resource.RLIMIT_NPROC, PROCESS_LIMIT)


def lower_limit(which: int, soft: int, hard: int | None = None) -> None:
    """Set the soft and hard limit, never above the current hard limit."""
    hard = soft if hard is None else hard
    _, current = resource.getrlimit(which)
    if current != resource.RLIM_INFINITY:
        soft, hard = min(soft, current), min(hard, current)
    resource.setrlimit(which, (soft, hard))
