"""Landlock for a worker: which files it may reach, no TCP, no signals out.

rlimits bound how much a worker may use and seccomp bounds which system
calls it may make, but neither can tell one path from another: a worker
allowed to ``open`` at all may open anything its uid can read. Landlock is
the kernel's unprivileged access control on objects. After ``restrict_self``
this process, and everything it later forks or starts, can only reach the
paths it was granted; on ABI 4 and later it can neither bind nor connect a
TCP socket, and on ABI 6 and later it can neither signal a process outside
its own Landlock domain nor connect to an abstract unix socket made outside
it. None of this can be lifted again, by root or by anyone else.

Each feature came with a Landlock ABI version. ``restrict_self`` asks the
kernel which version it offers and handles every access right that version
knows, so a right nobody granted is a right denied; an older kernel gets the
layers it has, and one without Landlock gets none (see ``LandlockResult``).

Why raw system calls through ctypes: the ``landlock`` package on PyPI only
covers filesystem rights, and the TCP and scope layers are most of the
reason to use Landlock here. The whole interface is three system calls and
two small structs, and ctypes is already loaded by the confinement steps.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass

# Numbers from the unified system call table: every architecture but alpha
# has given new calls the same number since Linux 5.1, x86_64 included.
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446

PR_SET_NO_NEW_PRIVS = 38
LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
LANDLOCK_RULE_PATH_BENEATH = 1

# The newest ABI this module was written and tested against. A newer kernel
# still gets every layer below; its new rights are simply left unhandled.
NEWEST_KNOWN_ABI = 7

ACCESS_FS_EXECUTE = 1 << 0
ACCESS_FS_WRITE_FILE = 1 << 1
ACCESS_FS_READ_FILE = 1 << 2
ACCESS_FS_READ_DIR = 1 << 3
ACCESS_FS_REMOVE_DIR = 1 << 4
ACCESS_FS_REMOVE_FILE = 1 << 5
ACCESS_FS_MAKE_CHAR = 1 << 6
ACCESS_FS_MAKE_DIR = 1 << 7
ACCESS_FS_MAKE_REG = 1 << 8
ACCESS_FS_MAKE_SOCK = 1 << 9
ACCESS_FS_MAKE_FIFO = 1 << 10
ACCESS_FS_MAKE_BLOCK = 1 << 11
ACCESS_FS_MAKE_SYM = 1 << 12
ACCESS_FS_REFER = 1 << 13
ACCESS_FS_TRUNCATE = 1 << 14
ACCESS_FS_IOCTL_DEV = 1 << 15

ACCESS_NET_BIND_TCP = 1 << 0
ACCESS_NET_CONNECT_TCP = 1 << 1

SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1

# Filesystem rights by the ABI that introduced them.
FS_RIGHTS_SINCE_ABI = {
    1: (1 << 13) - 1,  # execute through make_sym: thirteen rights
    2: ACCESS_FS_REFER,
    3: ACCESS_FS_TRUNCATE,
    5: ACCESS_FS_IOCTL_DEV,
}

# Execute is granted with read: Landlock checks it only at execve, which
# seccomp refuses in a worker anyway, while a caller without seccomp (tests,
# the doctor command) may still want to run tools from a read-only tree.
# Libraries need no execute right: mmap(PROT_EXEC) is not checked.
READ_RIGHTS = ACCESS_FS_READ_FILE | ACCESS_FS_READ_DIR | ACCESS_FS_EXECUTE

# The only rights the kernel accepts on a rule for a non-directory.
FILE_RIGHTS = (
    ACCESS_FS_EXECUTE
    | ACCESS_FS_WRITE_FILE
    | ACCESS_FS_READ_FILE
    | ACCESS_FS_TRUNCATE
    | ACCESS_FS_IOCTL_DEV
)

# Both mean "no Landlock here": not built in, or disabled at boot.
NO_LANDLOCK_ERRNOS = (errno.ENOSYS, errno.EOPNOTSUPP)


class RulesetAttr(ctypes.Structure):
    """``struct landlock_ruleset_attr``; it grew a field in ABIs 4 and 6."""

    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class PathBeneathAttr(ctypes.Structure):
    """``struct landlock_path_beneath_attr``: packed, 12 bytes."""

    _pack_ = 1
    _fields_ = [
        ("allowed_access", ctypes.c_uint64),
        ("parent_fd", ctypes.c_int32),
    ]


@dataclass(frozen=True)
class LandlockResult:
    """What ``restrict_self`` applied, for the doctor command and the logs.

    ``abi`` is the Landlock ABI the ruleset was built for, 0 when nothing was
    applied; ``layers`` names what was applied, out of ``"filesystem"``,
    ``"tcp"`` and ``"scopes"``.
    """

    abi: int
    layers: tuple[str, ...]


def abi_version() -> int:
    """The Landlock ABI this kernel offers, 0 when it has none (or it is disabled).

    Any other failure, such as a seccomp filter refusing the call, raises
    ``OSError``: answering 0 then would hide a confinement step that was
    expected and silently skipped.
    """
    try:
        return _landlock_call(
            "landlock_create_ruleset(VERSION)",
            SYS_LANDLOCK_CREATE_RULESET,
            0,
            0,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    except OSError as error:
        if error.errno in NO_LANDLOCK_ERRNOS:
            return 0
        raise


def restrict_self(
    read_only: Iterable[str],
    read_write: Iterable[str],
    deny_tcp: bool = True,
    scope_signals_and_abstract_sockets: bool = True,
) -> LandlockResult:
    """Confine this process (and its future threads/children) to the given paths.

    ``read_only`` directories may be listed and their files read, and files
    given here may be read; ``read_write`` directories allow every file
    operation beneath them. Every other path is denied. A path that does not
    exist is skipped. ``deny_tcp`` denies every TCP bind and connect (ABI 4
    and later); ``scope_signals_and_abstract_sockets`` denies signals to, and
    abstract unix sockets of, processes outside this domain (ABI 6 and later).

    Only the calling thread and what it starts later are confined: threads
    already running are not, so call this before starting any. It also sets
    no_new_privs, which the kernel requires of an unprivileged caller.

    Returns ``LandlockResult(0, ())`` on a kernel without Landlock; any other
    failure raises ``OSError`` naming the step that failed.
    """
    abi = min(abi_version(), NEWEST_KNOWN_ABI)
    if abi == 0:
        return LandlockResult(0, ())

    handled_fs = handled_fs_rights(abi)
    handled_net = 0
    if deny_tcp and abi >= 4:
        handled_net = ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP
    scoped = 0
    if scope_signals_and_abstract_sockets and abi >= 6:
        scoped = SCOPE_SIGNAL | SCOPE_ABSTRACT_UNIX_SOCKET

    ruleset_fd = create_ruleset(abi, handled_fs, handled_net, scoped)
    try:
        add_path_rules(ruleset_fd, read_only, handled_fs & READ_RIGHTS)
        add_path_rules(ruleset_fd, read_write, handled_fs)
        set_no_new_privs()
        _landlock_call(
            "landlock_restrict_self", SYS_LANDLOCK_RESTRICT_SELF, ruleset_fd, 0
        )
    finally:
        os.close(ruleset_fd)

    layers = ["filesystem"]
    if handled_net:
        layers.append("tcp")
    if scoped:
        layers.append("scopes")
    return LandlockResult(abi, tuple(layers))


def handled_fs_rights(abi: int) -> int:
    """Every filesystem right ``abi`` knows: all are denied unless granted.

    On ABI 1 refer is not among them, and the kernel then refuses every
    rename or link across directories (EXDEV), even inside a writable tree.
    """
    rights = 0
    for since, added in FS_RIGHTS_SINCE_ABI.items():
        if abi >= since:
            rights |= added
    return rights


def create_ruleset(abi: int, handled_fs: int, handled_net: int, scoped: int) -> int:
    """A new ruleset descriptor that handles the given rights and scopes.

    The struct grew with the ABI, and a kernel refuses one longer than it
    knows (E2BIG) unless the extra bytes are zero: passing the size of the
    struct at ``abi`` asks for exactly what that ABI defines, nothing more.
    """
    attr = RulesetAttr(handled_fs, handled_net, scoped)
    if abi < 4:
        size = 8
    elif abi < 6:
        size = 16
    else:
        size = ctypes.sizeof(attr)

    return _landlock_call(
        "landlock_create_ruleset",
        SYS_LANDLOCK_CREATE_RULESET,
        ctypes.addressof(attr),
        size,
        0,
    )


def add_path_rules(ruleset_fd: int, paths: Iterable[str], access: int) -> None:
    """Grant ``access`` beneath each of ``paths`` that exists."""
    for path in paths:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            continue

        try:
            add_path_rule(ruleset_fd, fd, path, access)
        finally:
            os.close(fd)


def add_path_rule(ruleset_fd: int, fd: int, path: str, access: int) -> None:
    """Add one path-beneath rule for the open ``fd`` of ``path``."""
    # Asked of the open descriptor, not the path: the answer then describes
    # the very inode the rule is attached to.
    if not stat.S_ISDIR(os.fstat(fd).st_mode):
        access &= FILE_RIGHTS

    attr = PathBeneathAttr(access, fd)
    _landlock_call(
        "landlock_add_rule",
        SYS_LANDLOCK_ADD_RULE,
        ruleset_fd,
        LANDLOCK_RULE_PATH_BENEATH,
        ctypes.addressof(attr),
        0,
        path=path,
    )


def set_no_new_privs() -> None:
    """Set no_new_privs; harmless when the caller has already set it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")


def _landlock_call(step: str, number: int, *args: int, path: str = "") -> int:
    """Make one Landlock system call; a failure raises ``OSError`` naming it.

    Every argument goes as a C long: ``syscall`` is variadic and reads each
    one as a long, while ctypes would pass a bare Python int as a C int.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long

    result: int = libc.syscall(
        ctypes.c_long(number), *(ctypes.c_long(arg) for arg in args)
    )
    if result < 0:
        code = ctypes.get_errno()
        message = f"{step} failed: {os.strerror(code).lower()}"
        raise OSError(code, message, path or None)
    return result
