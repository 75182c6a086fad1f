"""Hostile tenant: writes outside its scratch folder, and fills that folder.

Writing outside is tried by opening for writing, creating the file when it
is missing: that is the step the sandbox must refuse, and should it ever
succeed, an existing file is left as it was and a new one stays empty.

The filling paths write 1 MiB blocks until the kernel refuses one, then
delete what they wrote, so the worker can go on serving.
"""

import os

import msgspec

import sandbox_runner

SCRATCH = os.environ["TMPDIR"]
BLOCK = b"\x01" * (1024 * 1024)
FILE_MIB = 8
MOST_MIB = 1024
SITE_PACKAGES = os.path.dirname(os.path.dirname(msgspec.__file__))

OUTSIDE = {
    "own-folder": "planted.txt",
    "own-script": "worker.py",
    "other-tenant": "../echo/planted.txt",
    "tmp": "/tmp/switchyard-disk-filler.txt",
    # Code every worker runs: a change here would reach every tenant.
    "runner-code": sandbox_runner.__file__,
    "stdlib": os.__file__,
    # A .pth file runs at every interpreter start, the dispatcher's too.
    "site-packages": os.path.join(SITE_PACKAGES, "switchyard-planted.pth"),
}


def write_outside(name):
    try:
        fd = os.open(OUTSIDE[name], os.O_WRONLY | os.O_CREAT, 0o644)
    except OSError as exc:
        return {"refused": f"{type(exc).__name__}: {exc}"}
    os.close(fd)
    return {"succeeded": f"opened {OUTSIDE[name]} for writing"}


def fill_scratch(file_mib):
    """Write files of ``file_mib`` MiB until a write fails."""
    written = 0
    try:
        while written < MOST_MIB:
            path = os.path.join(SCRATCH, f"fill-{written}")
            with open(path, "wb") as target:
                for _ in range(file_mib):
                    target.write(BLOCK)
                    written += 1
        report = {"succeeded": f"wrote {written} MiB"}
    except OSError as exc:
        report = {"refused": f"{type(exc).__name__}: {exc}"}
    for name in os.listdir(SCRATCH):
        os.unlink(os.path.join(SCRATCH, name))
    report["written_mib"] = written
    return report


async def fetch(request, env, ctx):
    name = request.path.strip("/")
    if name == "fill-scratch":
        return fill_scratch(FILE_MIB)
    if name == "one-huge-file":
        return fill_scratch(MOST_MIB)
    return write_outside(name)
