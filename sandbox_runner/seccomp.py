"""The seccomp allowlist every worker runs under, and how it gets there.

What it allows: what CPython, its stdlib and the asyncio frame loop need
once the loop exists and the runner's own imports are done - reading and
writing descriptors, files (which Landlock then narrows to the tenant's own
folders), memory, time, signals handled inside the process, epoll, and
threads (``clone`` only with ``CLONE_THREAD``).

What it refuses, with EPERM so that tenant code sees a ``PermissionError``
rather than a dead worker: every other system call. That covers creating
sockets of any family, ``execve``, forking new processes, ``ptrace``,
``mount``, namespaces, ``bpf``, ``io_uring``, ``personality``, kernel
modules, keyrings, ``kill`` and friends (a worker has no business
signalling anyone, itself included), the ``TIOCSTI`` terminal injection,
and every ``ioctl``, ``fcntl`` and ``prctl`` command not listed below.
``clone3`` answers ENOSYS instead: glibc then falls back to ``clone``,
whose flags a filter can inspect (``clone3`` passes them in memory, out of
a filter's sight).

A system call from another architecture (32-bit ``int 0x80`` reaches the
kernel here) kills the process outright: nothing legitimate uses it.

The filter is compiled once by the dispatcher with libseccomp (through
pyseccomp, which finds the system's ``libseccomp.so.2``) and sent to each
worker as BPF bytes; the worker only loads it, with one ``prctl``. Building
costs about 2 ms and importing pyseccomp 10-16 ms: neither belongs in every
cold start.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
CLONE_THREAD = 0x00010000
BPF_INSTRUCTION_BYTES = 8

ALLOWED_SYSCALLS = (
    # descriptors and files (Landlock decides which files)
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv",
    "pwritev", "preadv2", "pwritev2", "lseek", "close", "close_range",
    "fstat", "stat", "lstat", "newfstatat", "statx", "fstatfs", "statfs",
    "open", "openat", "access", "faccessat", "faccessat2", "getdents64",
    "readlink", "readlinkat", "getcwd", "chdir", "fchdir", "mkdir", "mkdirat",
    "rmdir", "unlink", "unlinkat", "rename", "renameat", "renameat2",
    "link", "linkat", "symlink", "symlinkat", "ftruncate", "truncate",
    "fsync", "fdatasync", "fchmod", "fchmodat", "chmod", "utimensat",
    "fadvise64", "fallocate", "flock", "dup", "dup2", "dup3",
    "pipe", "pipe2", "sendfile", "copy_file_range", "umask",
    # memory
    "mmap", "munmap", "mprotect", "mremap", "madvise", "brk", "mincore",
    # time
    "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep",
    "gettimeofday", "time", "getitimer", "setitimer", "alarm",
    "timerfd_create", "timerfd_settime", "timerfd_gettime",
    # signals, within the process
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending",
    "rt_sigsuspend", "rt_sigtimedwait", "sigaltstack", "pause",
    # threads
    "futex", "set_robust_list", "get_robust_list", "rseq",
    "set_tid_address", "sched_yield", "sched_getaffinity", "getcpu",
    "membarrier", "exit", "exit_group",
    # who am I
    "getpid", "gettid", "getppid", "getuid", "geteuid", "getgid",
    "getegid", "getresuid", "getresgid", "getgroups", "getpgrp", "getpgid",
    "getsid", "getrusage", "times", "uname", "sysinfo", "getrandom",
    "getpriority", "sched_getscheduler", "sched_getparam",
    # the event loop: epoll, and its self-pipe socketpair made before the
    # filter (send/recv on it; no call here can make or connect a socket)
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait",
    "epoll_pwait", "epoll_pwait2", "poll", "ppoll", "select", "pselect6",
    "eventfd2", "sendto", "recvfrom", "wait4", "waitid",
)  # fmt: skip

# ioctl requests tenant code may make: non-blocking and close-on-exec
# flags, bytes waiting, and the terminal queries behind isatty().
ALLOWED_IOCTLS = (
    0x5421,  # FIONBIO
    0x5451,  # FIOCLEX
    0x5450,  # FIONCLEX
    0x541B,  # FIONREAD
    0x5401,  # TCGETS
    0x5413,  # TIOCGWINSZ
)
# fcntl commands: descriptor and status flags, duplication, record locks,
# pipe size. Not F_SETOWN, F_SETOWN_EX or F_SETSIG: with O_ASYNC they have
# the kernel signal a process of the tenant's choosing, a kill() by proxy.
ALLOWED_FCNTLS = (
    0,  # F_DUPFD
    1,  # F_GETFD
    2,  # F_SETFD
    3,  # F_GETFL
    4,  # F_SETFL
    5,  # F_GETLK
    6,  # F_SETLK
    7,  # F_SETLKW
    36,  # F_OFD_GETLK
    37,  # F_OFD_SETLK
    38,  # F_OFD_SETLKW
    1030,  # F_DUPFD_CLOEXEC
    1032,  # F_GETPIPE_SZ
)
ALLOWED_PRCTLS = (
    15,  # PR_SET_NAME
    16,  # PR_GET_NAME
    3,  # PR_GET_DUMPABLE
)


def build_program() -> bytes:
    """Compile the allowlist to BPF with libseccomp; run once, by the host.

    Raises ImportError or OSError when libseccomp is missing.
    """
    # Imported here, not at the top: only the host pays for them.
    import tempfile

    import pyseccomp as sc

    policy = sc.SyscallFilter(sc.ERRNO(errno.EPERM))
    policy.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    for name in ALLOWED_SYSCALLS:
        # A name this libseccomp does not know cannot be needed either.
        with contextlib.suppress(ValueError, RuntimeError, OSError):
            policy.add_rule(sc.ALLOW, name)

    thread_flag = sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, CLONE_THREAD)
    policy.add_rule(sc.ALLOW, "clone", thread_flag)
    policy.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    for request in ALLOWED_IOCTLS:
        policy.add_rule(sc.ALLOW, "ioctl", sc.Arg(1, sc.EQ, request))
    for command in ALLOWED_FCNTLS:
        policy.add_rule(sc.ALLOW, "fcntl", sc.Arg(1, sc.EQ, command))
    for option in ALLOWED_PRCTLS:
        policy.add_rule(sc.ALLOW, "prctl", sc.Arg(0, sc.EQ, option))
    # getrlimit goes through prlimit64 with no new limit; setting is refused.
    policy.add_rule(sc.ALLOW, "prlimit64", sc.Arg(2, sc.EQ, 0))

    with tempfile.TemporaryFile() as exported:
        policy.export_bpf(exported)
        exported.seek(0)
        return exported.read()


class SockFilterProgram(ctypes.Structure):
    """``struct sock_fprog``: instruction count and a pointer to them."""

    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def load_program(program: bytes) -> None:
    """Install a compiled filter on this process; it cannot be removed.

    The caller must have set ``PR_SET_NO_NEW_PRIVS`` first (the kernel
    refuses a filter from an unprivileged process otherwise).
    """
    if not program or len(program) % BPF_INSTRUCTION_BYTES:
        raise ValueError(f"a BPF program of {len(program)} bytes is malformed")
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = SockFilterProgram(
        len(program) // BPF_INSTRUCTION_BYTES, ctypes.addressof(buffer)
    )

    libc = ctypes.CDLL(None, use_errno=True)
    result = libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0)
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, "loading the seccomp filter failed")
