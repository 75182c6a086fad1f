"""Stacks of slow requests: where a request spends its time.

With ``slowlog_ms`` set, the runner starts one watch thread. Each request is
watched from the moment its frame arrives; once it has run past
``slowlog_ms``, the thread takes its stack and sends a ``SlowRequest``
frame, once per request. Tenant code has nothing to do for it.

Why a thread rather than a timer on the event loop: the requests worth a
look are often the ones that block the loop (``time.sleep`` or a long
computation in ``fetch``), and a blocked loop runs no callback, a timer's
included. The thread runs as soon as the blocking call releases the GIL,
or at the interpreter's next thread switch (every 5 ms) in Python code.
SIGALRM was the other candidate: its handler gets the interrupted frame,
but Python runs handlers between bytecodes of the main thread only, so a
blocking C call holds it up as it holds up the loop; and tenant code may
want that signal for itself.

Which stack belongs to a request:

- when its task is the one the loop is running, the request is on the main
  thread right now (blocking, or computing): the main thread's stack, from
  ``sys._current_frames``, is the request's, plain functions included;
- otherwise its task is suspended at an ``await``: the coroutine chain,
  followed through ``cr_await``, ends where it waits.

Only frames of files in the tenant's folder are kept, innermost last: the
runner's and asyncio's frames name nothing the tenant can change. Source
lines come from ``linecache``; the tenant's secret values in them are
replaced before a line is cut, so that a cut never leaves part of a value
behind (the host redacts again, as it does every log line). Locals are
never read.

XXX: some stacks end early or are missed. A chain stops at a task awaited
by another (``await task``, ``gather``, ``wait_for``) and at ``async for``
over an async generator: CPython keeps no pointer from the awaiting side to
what runs inside; a map from each future to the task that completes it
(asyncio's ``all_tasks`` and their callbacks) would lift that. Code that
blocks in a task the tenant created, or in a thread it started, is not
tied to any request; ``sys._current_frames`` has the threads, but nothing
says which request started them. A C function that holds the GIL (a huge
regular expression, say) keeps this thread from running until it returns:
only a sampler outside the process could see into it, and reading another
process's stack is what the sandbox forbids.
"""

from __future__ import annotations

import asyncio
import linecache
import os
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sandbox_runner import frames

MAX_CODE_CHARS = 240
MAX_NAME_CHARS = 160
# Shorter secrets are left alone, as the host leaves them (see tenant_log).
MIN_REDACTED_LENGTH = 4


@dataclass(frozen=True)
class WatchedRequest:
    """A request in flight, and when its frame arrived."""

    id: int
    task: asyncio.Task[None]
    started: float


class StackReader:
    """Finds the tenant's frames in a request's task, as stack entries."""

    def __init__(self, tenant_dir: str, secrets: dict[str, str]) -> None:
        self.prefix = os.path.join(tenant_dir, "")
        self.secrets = {
            name: value
            for name, value in secrets.items()
            if len(value) >= MIN_REDACTED_LENGTH
        }
        # The runner serves from the main thread, and so builds this there.
        self.main_thread = threading.get_ident()

    def stack_of(self, task: asyncio.Task[None]) -> list[frames.StackEntry]:
        """The tenant's frames in ``task``, outermost first, innermost last."""
        code_frames = self.running_frames(task)
        if code_frames is None:
            code_frames = awaiting_frames(task.get_coro())
        entries = [
            self.entry_for(frame)
            for frame in code_frames
            if frame.f_code.co_filename.startswith(self.prefix)
        ]
        return entries[-frames.MAX_STACK_ENTRIES :]

    def running_frames(self, task: asyncio.Task[None]) -> list[types.FrameType] | None:
        """The main thread's frames if it runs ``task`` right now, else None."""
        loop = task.get_loop()
        if asyncio.current_task(loop) is not task:
            return None
        innermost = sys._current_frames().get(self.main_thread)
        # Asked again: the loop may have moved to another task in between.
        if innermost is None or asyncio.current_task(loop) is not task:
            return None
        return list(reversed(list(outward_from(innermost))))

    def entry_for(self, frame: types.FrameType) -> frames.StackEntry:
        """Where ``frame`` is, with its source line, secrets replaced."""
        code = frame.f_code
        line = frame.f_lineno or 0
        source = linecache.getline(code.co_filename, line).strip()
        return frames.StackEntry(
            file=self.clean(code.co_filename[len(self.prefix) :], MAX_NAME_CHARS),
            line=line,
            function=self.clean(code.co_qualname, MAX_NAME_CHARS),
            code=self.clean(source, MAX_CODE_CHARS),
        )

    def clean(self, text: str, limit: int) -> str:
        """``text`` with secret values replaced by their names, then cut."""
        for name, value in self.secrets.items():
            text = text.replace(value, f"[secret {name}]")
        return text[:limit]


def outward_from(frame: types.FrameType | None) -> Iterator[types.FrameType]:
    """``frame`` and its callers, innermost first."""
    while frame is not None:
        yield frame
        frame = frame.f_back


def awaiting_frames(awaitable: object) -> list[types.FrameType]:
    """The frames of a suspended coroutine chain, outermost first.

    Only CPython's coroutines and generators are followed (neither type can
    be subclassed): their attributes are plain reads, while any other
    awaitable's could run tenant code in the watch thread.
    """
    chain: list[types.FrameType] = []
    while True:
        if isinstance(awaitable, types.CoroutineType):
            frame, awaitable = awaitable.cr_frame, awaitable.cr_await
        elif isinstance(awaitable, types.GeneratorType):
            frame, awaitable = awaitable.gi_frame, awaitable.gi_yieldfrom
        else:
            return chain
        if frame is None:  # finished: nothing waits there
            return chain
        chain.append(frame)


class SlowRequestWatch:
    """Reports each request that runs past ``slowlog_ms``, once; 0: none."""

    def __init__(
        self,
        slowlog_ms: int,
        stacks: StackReader,
        send: Callable[[frames.SlowRequest], None],
    ) -> None:
        self.threshold_s = slowlog_ms / 1000
        self.stacks = stacks
        self.send = send
        # Requests not reported yet, oldest first: they share one threshold,
        # so the first is always the next one due.
        self.watched: dict[int, WatchedRequest] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        # True while the thread waits with no request to time: the next
        # request must wake it. Otherwise it wakes for the oldest anyway.
        self.idle = True

    def start(self) -> None:
        """Start the watch thread, unless slow requests go unreported."""
        if self.threshold_s:
            threading.Thread(
                target=self.run, name="slow-request-watch", daemon=True
            ).start()

    def track(self, request_id: int, task: asyncio.Task[None]) -> None:
        """Start the clock of a request that has just arrived."""
        if not self.threshold_s:
            return
        with self.lock:
            self.watched[request_id] = WatchedRequest(
                request_id, task, time.monotonic()
            )
            wake, self.idle = self.idle, False
        if wake:
            self.wake.set()

    def forget(self, request_id: int) -> None:
        """The request is over; if it was not reported, it never will be."""
        with self.lock:
            self.watched.pop(request_id, None)

    def run(self) -> None:
        """The watch thread: report what is due, sleep until the next is."""
        while True:
            due, wait_s = self.take_due()
            for request in due:
                try:
                    self.report(request)
                except OSError:
                    return  # the frame pipe is gone, and the host with it
                # The thread must outlive whatever odd state tenant code
                # leaves in its frames: dead, it would report nothing more.
                except Exception:  # noqa: BLE001
                    continue
            self.wake.wait(wait_s)
            self.wake.clear()

    def take_due(self) -> tuple[list[WatchedRequest], float | None]:
        """Requests past the threshold, no longer watched; seconds to the next."""
        now = time.monotonic()
        due: list[WatchedRequest] = []
        with self.lock:
            for request in list(self.watched.values()):
                wait_s = request.started + self.threshold_s - now
                if wait_s > 0:
                    return due, wait_s
                due.append(self.watched.pop(request.id))
            self.idle = True
        return due, None

    def report(self, request: WatchedRequest) -> None:
        """Send the stack of a request that is still running."""
        if request.task.done():
            return
        stack = self.stacks.stack_of(request.task)
        elapsed_ms = (time.monotonic() - request.started) * 1000
        self.send(frames.SlowRequest(request.id, elapsed_ms, stack))
