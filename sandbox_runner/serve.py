"""The worker's main loop: boot, load the tenant's script, serve frames.

The host writes a ``Boot`` frame first. The worker confines itself, imports
the script, answers ``Ready``, and from then on runs one asyncio task per
``Request`` frame, so many requests are in flight at once and answers go
back in whatever order they finish.

Anything the tenant's code raises is caught here: the traceback goes to the
tenant's log, and the client gets a ``Failure`` whose message names only the
exception type (an exception's text may hold a secret value).
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import os
import select
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from sandbox_runner import adapters, audit, frames, runtime, slowlog
from sandbox_runner.confine import (
    FrameChannel,
    apply_syscall_filter,
    confine,
    take_frame_channel,
)
from sandbox_runner.outbound import OutboundChannel
from sandbox_runner.responses import InvalidResponse, as_response, checked_parts

Fetch = Callable[[runtime.Request, runtime.Env, runtime.Context], Awaitable[Any]]


class ScriptLoadError(Exception):
    """The tenant's script could not be imported or has no usable fetch."""


def main() -> None:
    """Entry point of ``python -m sandbox_runner``."""
    started = time.perf_counter()
    channel = take_frame_channel()
    boot = read_boot_frame(channel.read_fd)

    try:
        layers = confine(channel, boot)
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        layers.append(apply_syscall_filter(boot.seccomp_program))
    except Exception as exc:  # noqa: BLE001 - reported, then a reserved exit
        report_boot_failure(channel, "the worker could not confine itself", exc)
        os._exit(frames.EXIT_CONFINEMENT_FAILED)
    refusals = audit.install()

    try:
        fetch = load_script(boot.tenant_dir, boot.script)
    except ScriptLoadError as exc:
        report_boot_failure(channel, "script failed to load", exc.__cause__ or exc)
        os._exit(frames.EXIT_LOAD_FAILED)

    startup_ms = (time.perf_counter() - started) * 1000
    runner = Runner(channel, boot, fetch, refusals)
    loop.run_until_complete(runner.serve(startup_ms, layers))
    os._exit(0)


def read_boot_frame(fd: int) -> frames.Boot:
    """Block until the host's ``Boot`` frame has arrived, and decode it."""
    prefix = _read_exactly(fd, frames.LENGTH_PREFIX.size)
    length = frames.read_length(prefix, frames.FRAME_OVERHEAD_BYTES)
    return msgspec.msgpack.decode(_read_exactly(fd, length), type=frames.Boot)


def _read_exactly(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    while size:
        chunk = os.read(fd, size)
        if not chunk:
            raise SystemExit("host closed the frame pipe before booting")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def load_script(tenant_dir: str, script: str) -> Fetch:
    """Import the tenant's script and return its ``fetch`` coroutine.

    A ``.json`` script is a declarative adapter, run by ``adapters.py``.
    """
    path = os.path.join(tenant_dir, script)
    if script.endswith(".json"):
        try:
            return adapters.load_fetch(Path(path))
        except (OSError, ValueError) as exc:
            raise ScriptLoadError(str(exc)) from exc
    sys.path.insert(0, tenant_dir)
    try:
        spec = importlib.util.spec_from_file_location("tenant_script", path)
        if spec is None or spec.loader is None:
            raise ScriptLoadError(f"cannot load {script}")
        module = importlib.util.module_from_spec(spec)
        sys.modules["tenant_script"] = module
        spec.loader.exec_module(module)
    except BaseException as exc:
        raise ScriptLoadError(str(exc)) from exc

    fetch = getattr(module, "fetch", None)
    if not inspect.iscoroutinefunction(fetch):
        raise ScriptLoadError(f"{script} defines no 'async def fetch'")
    return fetch


def secret_values(boot: frames.Boot) -> dict[str, str]:
    """The tenant's secret values by name, to keep them out of its stacks."""
    values = {name: boot.bindings.get(name) for name in boot.secret_names}
    return {name: value for name, value in values.items() if isinstance(value, str)}


def write_whole(fd: int, data: bytes) -> None:
    """Write all of ``data`` to a non-blocking pipe, waiting while it is full."""
    view = memoryview(data)
    writable = select.poll()
    writable.register(fd, select.POLLOUT)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            writable.poll()


def report_boot_failure(channel: FrameChannel, what: str, exc: BaseException) -> None:
    """Tell the host why the worker cannot serve; the caller then exits."""
    text = "".join(traceback.format_exception(exc))
    log = frames.Log(level="error", message=f"{what}:\n{text}")
    encoder = msgspec.msgpack.Encoder()
    os.write(channel.write_fd, frames.encode_frame(encoder, log))


class Runner:
    """Serves ``Request`` frames for one loaded script."""

    def __init__(
        self,
        channel: FrameChannel,
        boot: frames.Boot,
        fetch: Fetch,
        refusals: audit.RefusalLog,
    ) -> None:
        self.channel = channel
        self.tenant = boot.tenant
        self.max_frame_bytes = boot.max_frame_bytes
        self.env = runtime.Env(boot.bindings)
        self.fetch = fetch
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.refusals = refusals
        max_body_bytes = boot.max_frame_bytes - frames.FRAME_OVERHEAD_BYTES
        self.outbound = OutboundChannel(self.send, max_body_bytes)
        self.encoder = msgspec.msgpack.Encoder()
        self.decoder = frames.worker_decoder()
        # Frames go out from the loop and from the slow-request watch
        # thread; see send_from_thread.
        self.send_lock = threading.Lock()
        self.thread_encoder = msgspec.msgpack.Encoder()
        stacks = slowlog.StackReader(boot.tenant_dir, secret_values(boot))
        self.slow_watch = slowlog.SlowRequestWatch(
            boot.slowlog_ms, stacks, self.send_from_thread
        )

    async def serve(self, startup_ms: float, layers: list[str]) -> None:
        """Announce readiness, then handle frames until told to stop."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**16, loop=loop)
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader),
            os.fdopen(self.channel.read_fd, "rb", buffering=0),
        )
        transport, _ = await loop.connect_write_pipe(
            asyncio.Protocol, os.fdopen(self.channel.write_fd, "wb", buffering=0)
        )
        self.transport = transport
        self.loop = loop
        self.slow_watch.start()

        ready = frames.Ready(frames.PROTOCOL_VERSION, os.getpid(), startup_ms, layers)
        self.send(ready)
        self.send_refusals()
        await self.read_frames(reader)

    async def read_frames(self, reader: asyncio.StreamReader) -> None:
        """Act on each frame from the host until Shutdown or end of pipe."""
        while True:
            try:
                prefix = await reader.readexactly(frames.LENGTH_PREFIX.size)
                length = frames.read_length(prefix, self.max_frame_bytes)
                frame = self.decoder.decode(await reader.readexactly(length))
            except asyncio.IncompleteReadError:
                return  # the host is gone: nobody is left to answer
            except MemoryError:
                # The frame does not fit under memory_mb; half of it is
                # still on the pipe, so the stream cannot go on.
                os._exit(frames.EXIT_OUT_OF_MEMORY)
            if isinstance(frame, frames.Request):
                task = asyncio.create_task(self.handle(frame))
                self.tasks[frame.id] = task
                self.slow_watch.track(frame.id, task)
            elif isinstance(frame, frames.Cancel):
                self.cancel(frame.id)
            elif isinstance(frame, frames.Ping):
                self.send(frames.Pong(frame.seq))
            elif isinstance(frame, frames.OutboundResult):
                self.outbound.settle(frame)
            elif isinstance(frame, frames.Shutdown):
                await self.drain()
                return

    def cancel(self, request_id: int) -> None:
        """Drop a request the host no longer waits for."""
        task = self.tasks.pop(request_id, None)
        if task is not None:
            task.cancel()

    async def drain(self) -> None:
        """Let every request in flight finish."""
        if self.tasks:
            await asyncio.wait(list(self.tasks.values()))

    def send(self, frame: object) -> None:
        """Write one frame to the host; the pipe transport buffers it."""
        self.send_bytes(frames.encode_frame(self.encoder, frame))

    def send_bytes(self, data: bytes) -> None:
        with self.send_lock:
            self.transport.write(data)

    def send_from_thread(self, frame: object) -> None:
        """Write a frame from another thread, even while the loop is blocked.

        Tenant code that blocks the loop is when a slow request's stack
        matters most, and the host may stop the worker at timeout_ms before
        the loop runs again. Writing straight to the pipe keeps frames whole
        as long as the transport holds no unsent bytes: it only writes
        within send_bytes, under the same lock, or to flush bytes it holds.
        When it does hold some, the frame takes its turn through the loop.
        """
        data = frames.encode_frame(self.thread_encoder, frame)
        with self.send_lock:
            if not self.transport.get_write_buffer_size():
                write_whole(self.channel.write_fd, data)
                return
        self.loop.call_soon_threadsafe(self.send_bytes, data)

    async def handle(self, frame: frames.Request) -> None:
        """Run ``fetch`` for one request and send back its outcome."""
        try:
            request = runtime.Request(
                frame.method, frame.url, frame.headers, frame.body
            )
            ctx = runtime.Context(self.tenant, frame.request_id, self.outbound)
            result = await self.fetch(request, self.env, ctx)
            answer: object = self.to_response_frame(frame.id, result)
        except asyncio.CancelledError:
            if self.was_cancelled_by_host():
                return
            answer = self.failure_for(frame.id, sys.exc_info()[1])
        # Tenant code may raise anything, SystemExit and BaseException
        # subclasses included; none of it may end the worker or the request.
        except BaseException as exc:  # noqa: BLE001
            answer = self.failure_for(frame.id, exc)
        finally:
            self.tasks.pop(frame.id, None)
            self.slow_watch.forget(frame.id)
        self.send(answer)
        self.send_refusals()

    def send_refusals(self) -> None:
        """Pass on what the sandbox refused since last time, once per kind."""
        for note in self.refusals.take():
            self.send(frames.Log(level="warning", message=note))

    def was_cancelled_by_host(self) -> bool:
        """True when this task was cancelled by a Cancel frame.

        Tenant code can raise CancelledError itself (or await a task that
        was cancelled); that is a failure of the request, not a cancel.
        """
        task = asyncio.current_task()
        return task is not None and task.cancelling() > 0

    def failure_for(self, request_id: int, exc: BaseException | None) -> frames.Failure:
        """Log the traceback for the tenant; give the client only its type."""
        text = "".join(traceback.format_exception(exc)) if exc else "no exception"
        self.send(frames.Log(level="error", message=f"fetch raised:\n{text}"))
        if isinstance(exc, InvalidResponse):
            message = str(exc)
        else:
            message = f"the tenant's script raised {type(exc).__name__}"
        return frames.Failure(request_id, "tenant_error", message)

    def to_response_frame(self, request_id: int, result: Any) -> frames.Response:
        """Turn whatever ``fetch`` returned into a checked Response frame."""
        max_body_bytes = self.max_frame_bytes - frames.FRAME_OVERHEAD_BYTES
        status, headers, body = checked_parts(as_response(result), max_body_bytes)
        return frames.Response(request_id, status, headers, body)
