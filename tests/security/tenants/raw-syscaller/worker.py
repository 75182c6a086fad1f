"""Hostile tenant: system calls by number, past every Python-level check.

Each call is made with real arguments, so that the only thing between it
and success is the seccomp filter; the answer is the errno the kernel gave.
A signal, when one is sent, is 0: it checks permission and hurts nobody.
"""

import ctypes
import errno
import mmap
import os
import platform
import socket

SIGCHLD = 17
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

TRUE = ctypes.c_char_p(b"/bin/true")
ARGV = (ctypes.c_char_p * 2)(b"/bin/true", None)


def args_of(name):
    """The system call number and its arguments, each a C long."""
    dispatcher = os.getppid()
    calls = {
        "socket": (41, socket.AF_INET, socket.SOCK_STREAM, 0),
        "fork": (57,),
        "vfork": (58,),
        "clone-process": (56, SIGCHLD, 0, 0, 0, 0),
        "execve": (59, ctypes.cast(TRUE, ctypes.c_void_p).value,
                   ctypes.addressof(ARGV), 0),
        "kill": (62, dispatcher, 0),
        "tgkill": (234, dispatcher, dispatcher, 0),
        "ptrace-attach": (101, 16, dispatcher, 0, 0),
        "setuid": (105, 0),
        "unshare-net": (272, 0x40000000),
        "pidfd-open": (434, dispatcher, 0),
        "io-uring-setup": (425, 1, 0),
        "bpf": (321, 0, 0, 0),
        "clone3": (435, 0, 0),
        # KEYCTL_GET_KEYRING_ID of the session keyring, which the worker
        # would share with the dispatcher's login session.
        "keyctl": (250, 0, -3, 0),
        # UFFD_USER_MODE_ONLY: open to unprivileged callers since 5.11.
        "userfaultfd": (323, 1),
    }  # fmt: skip
    return calls[name]


def call(name):
    ctypes.set_errno(0)
    result = libc.syscall(*(ctypes.c_long(arg) for arg in args_of(name)))
    if result == 0 and name in ("fork", "vfork", "clone-process"):
        os._exit(0)  # the child, had the call gone through
    if result == -1:
        return {"refused": errno.errorcode[ctypes.get_errno()]}
    return {"succeeded": f"syscall {name} returned {result}"}


def call_from_32_bit_abi():
    """getpid through ``int 0x80``, the i386 system call table.

    The filter's rules describe x86_64 numbers only, so a call from another
    ABI must kill the process rather than be judged by the wrong table.
    """
    if platform.machine() != "x86_64":
        return {"refused": f"no int 0x80 on {platform.machine()}"}
    # mov eax, 20 (i386 getpid); int 0x80; ret
    code = bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3])
    prot = mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=prot)
    page.write(code)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    result = ctypes.CFUNCTYPE(ctypes.c_int)(address)()
    return {"succeeded": f"int 0x80 getpid returned {result}"}


async def fetch(request, env, ctx):
    if request.path == "/int80-getpid":
        return call_from_32_bit_abi()
    if request.path == "/pid":
        return {"pid": os.getpid()}
    return call(request.path.strip("/"))
