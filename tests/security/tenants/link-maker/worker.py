"""Hostile tenant: reads another tenant's secrets through a link it made.

Its scratch folder (``$TMPDIR``) is the one place it may write, so that
is where the links go: a symlink by absolute path, one by relative path,
and a hard link. Each link is removed again before the answer.
"""

import os

SCRATCH = os.environ["TMPDIR"]
TARGET = os.path.join(os.path.dirname(os.getcwd()), "echo", "secrets.demo.toml")


def relative_target():
    return os.path.relpath(TARGET, SCRATCH)


MAKERS = {
    "symlink": lambda link: os.symlink(TARGET, link),
    "relative-symlink": lambda link: os.symlink(relative_target(), link),
    "hardlink": lambda link: os.link(TARGET, link),
}


def read_through(kind):
    link = os.path.join(SCRATCH, kind)
    report = {}
    try:
        MAKERS[kind](link)
        report["made"] = True
        with open(link, "rb") as target:
            report["succeeded"] = target.read().decode("latin-1")
    except OSError as exc:
        report["refused"] = f"{type(exc).__name__}: {exc}"
    finally:
        if os.path.lexists(link):
            os.unlink(link)
    return report


async def fetch(request, env, ctx):
    return read_through(request.path.strip("/"))
