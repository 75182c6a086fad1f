"""Hostile tenant: reads and lists what lies around its own folder.

Its working directory is its tenant folder, so its neighbours are in
``..``; the dispatcher's state folder sits beside the tenants folder.
"""

import os

import sandbox_runner

HERE = os.getcwd()
TENANTS = os.path.dirname(HERE)
STATE = os.path.join(os.path.dirname(TENANTS), "state")
# The runner's package lives in the host's checkout, beside its tenants.
CHECKOUT = os.path.dirname(os.path.dirname(sandbox_runner.__file__))

FILES = {
    "relative-secrets": "../echo/secrets.demo.toml",
    "absolute-secrets": os.path.join(TENANTS, "echo", "secrets.demo.toml"),
    "example-secrets": os.path.join(TENANTS, "customer-a", "secrets.demo.toml"),
    "other-script": "../customer-a/worker.py",
    "checkout-secrets": os.path.join(
        CHECKOUT, "tenants", "customer-a", "secrets.demo.toml"
    ),
    "state-secrets": "../../state/secrets/planted.toml",
    "dispatcher-log": "../../dispatcher.log",
}
FOLDERS = {
    "list-tenants": "..",
    "list-echo": os.path.join(TENANTS, "echo"),
    "list-state": STATE,
    "list-other-scratch": os.path.join(STATE, "scratch", "echo"),
}


def read(path):
    with open(path, "rb") as target:
        return target.read(4096).decode("latin-1")


async def fetch(request, env, ctx):
    name = request.path.strip("/")
    try:
        if name in FILES:
            return {"succeeded": read(FILES[name])}
        return {"succeeded": os.listdir(FOLDERS[name])}
    except OSError as exc:
        return {"refused": f"{type(exc).__name__}: {exc}"}
