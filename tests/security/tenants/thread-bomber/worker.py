"""Hostile tenant: ``/bomb`` starts threads until starting one fails.

The threads only wait; once starting another has failed they are released
and joined, so the worker can go on serving ``/pid``.
"""

import os
import threading

MOST_THREADS = 5000


def start_threads_until_refused():
    release = threading.Event()
    threads = []
    try:
        while len(threads) < MOST_THREADS:
            thread = threading.Thread(target=release.wait, daemon=True)
            thread.start()
            threads.append(thread)
        report = {"succeeded": f"{len(threads)} threads"}
    except (RuntimeError, MemoryError, OSError) as exc:
        report = {"refused": f"{type(exc).__name__}: {exc}"}
    finally:
        release.set()
        for thread in threads:
            thread.join()
    report["threads"] = len(threads)
    return report


async def fetch(request, env, ctx):
    if request.path == "/bomb":
        return start_threads_until_refused()
    return {"pid": os.getpid()}
