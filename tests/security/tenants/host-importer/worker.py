"""Hostile tenant: imports the trusted host's code from inside a worker.

``sandbox_runner`` is the worker's own package; ``dispatcher`` is the
host's, and with it the tenant would learn where secrets and state live.
"""

import importlib
import os
import sys

import sandbox_runner

HOST_MODULES = ("dispatcher", "dispatcher.tenants", "dispatcher.sandbox")


def import_host_module(name):
    try:
        module = importlib.import_module(name)
    except (ImportError, OSError) as exc:
        return {"refused": f"{type(exc).__name__}: {exc}"}
    return {"succeeded": f"imported {module.__name__} from {module.__file__}"}


def load_host_file():
    """Past the import system: the host's source beside the runner's."""
    runner = os.path.dirname(sandbox_runner.__file__)
    path = os.path.join(os.path.dirname(runner), "dispatcher", "tenants.py")
    try:
        with open(path) as source:
            return {"succeeded": source.read(200)}
    except OSError as exc:
        return {"refused": f"{type(exc).__name__}: {exc}"}


async def fetch(request, env, ctx):
    name = request.path.strip("/")
    if name == "host-source":
        return load_host_file()
    sys.modules.pop(name, None)
    return import_host_module(name)
