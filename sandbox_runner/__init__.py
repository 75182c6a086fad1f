"""The inside of a worker: frames, confinement and the tenant runtime.

Tenant scripts import what they need from here::

    from sandbox_runner import Response

Nothing in this package imports from ``dispatcher``; it must stay small and
quick to import, because every cold start pays for it.
"""

from sandbox_runner.runtime import Context, Env, Headers, Request, Response

__all__ = ["Context", "Env", "Headers", "Request", "Response"]
