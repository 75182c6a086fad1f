"""One worker process as the host sees it: its pipes, its requests in flight.

A ``Worker`` owns a ``python -m sandbox_runner`` child with three pipes:
frames to it on stdin, frames from it on stdout, its log on stderr. All
pipe I/O is non-blocking asyncio: a blocking write to a worker that is busy
writing its own answer would deadlock both.

Every frame from a worker is untrusted input - tenant code shares its
process with the runner and can write frames of its own. So a frame is size
capped and decoded into the expected types only, a response is checked
against the rules of HTTP again, and an answer counts only for a request id
that is in flight on this very worker.

A worker leads its own process group, so that stopping it also stops any
process it managed to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import re
import signal
import time
from collections.abc import Callable

import msgspec

from dispatcher.errors import (
    FAILURE_CODES,
    DispatchError,
    ProtocolError,
    WorkerBootFailed,
    WorkerCrashed,
    WorkerMemoryExceeded,
    WorkerTimeout,
)
from dispatcher.launcher import Launcher, WorkerProcess
from dispatcher.outbound import NO_OUTBOUND, OutboundGateway
from dispatcher.sandbox import SandboxPolicy
from dispatcher.settings import Settings
from dispatcher.tenant_log import TenantLog, redact
from dispatcher.tenants import Tenant
from sandbox_runner import frames
from sandbox_runner.responses import response_problem

log = logging.getLogger("dispatcher.worker")


LOG_CHUNK_BYTES = 64 * 1024
TRACEBACK_FRAME = re.compile(r'File "([^"]+)", line (\d+)')
# How long to wait for the exit code of a worker whose pipe closed, to tell
# a crash from running out of memory.
EXIT_CODE_WAIT_S = 0.5


class Worker:
    """A running worker for one tenant; see the module note."""

    def __init__(
        self,
        tenant: Tenant,
        process: WorkerProcess,
        settings: Settings,
        tenant_log: TenantLog,
        sandbox: SandboxPolicy,
    ) -> None:
        self.tenant = tenant
        self.sandbox = sandbox
        self.process = process
        self.pid = process.pid
        self.settings = settings
        self.tenant_log = tenant_log
        self.pending: dict[int, asyncio.Future[frames.Response]] = {}
        self.ids = itertools.count(1)
        self.encoder = msgspec.msgpack.Encoder()
        self.decoder = frames.host_decoder()
        self.alive = True
        self.on_exit: Callable[[Worker], None] = lambda worker: None
        self.tasks: list[asyncio.Task[None]] = []
        self.startup_ms = 0.0
        self.layers: list[str] = []
        self.boot_log = ""
        # Outbound calls: which request ids are in flight here, the calls
        # under way, and who makes them.
        self.request_ids: dict[int, str] = {}
        # Requests whose slow-request stack has been logged: one each.
        self.slow_reported: set[int] = set()
        self.subrequests: dict[str, int] = {}
        self.outbound_tasks: set[asyncio.Task[None]] = set()
        self.outbound_gateway: OutboundGateway = NO_OUTBOUND
        # Pool bookkeeping: load, age and size of this worker.
        self.served = 0
        self.last_used = time.monotonic()
        self.recycle_after: int | None = None
        self.recycling = False
        self.retiring = False
        # Why the worker left service, for the exit counts: crash, timeout,
        # memory, heartbeat, or the reason a graceful shutdown was given.
        self.exit_reason = ""
        self.measured_at = 0
        self.rss = 0
        # Heartbeat: when the worker was last heard from, and the ping
        # still waiting for its pong, if any.
        self.last_heard = time.monotonic()
        self.ping_seq = 0
        self.ping_sent_at: float | None = None

    @classmethod
    async def spawn(
        cls,
        tenant: Tenant,
        settings: Settings,
        tenant_log: TenantLog,
        sandbox: SandboxPolicy,
        launcher: Launcher,
    ) -> Worker:
        """Start a worker, boot it, and return once it is Ready."""
        process = await launcher.launch(tenant.dir)
        worker = cls(tenant, process, settings, tenant_log, sandbox)
        await worker.boot()
        return worker

    async def boot(self) -> None:
        """Send Boot, wait for Ready, then start reading frames and logs."""
        started = time.perf_counter()
        self.tasks.append(asyncio.create_task(self.read_log()))
        try:
            self.write(self.boot_frame())
            async with asyncio.timeout(self.settings.startup_timeout_s):
                ready = await self.read_ready()
        except (TimeoutError, DispatchError, OSError) as exc:
            await self.kill()
            raise self.boot_failure(exc) from None
        except asyncio.CancelledError:
            await self.kill()
            raise

        self.startup_ms = (time.perf_counter() - started) * 1000
        self.tasks.append(asyncio.create_task(self.read_frames()))
        self.tasks.append(asyncio.create_task(self.watch_exit()))
        log.info(
            "worker started for tenant %s, pid %d, in %.1f ms (runner %.1f ms); "
            "confined by %s",
            self.tenant.id,
            self.pid,
            self.startup_ms,
            ready.startup_ms,
            ", ".join(ready.layers),
        )
        self.layers = ready.layers

    @property
    def in_flight(self) -> int:
        """Requests sent to this worker and not yet answered."""
        return len(self.pending)

    @property
    def serving(self) -> bool:
        """Alive, not retiring, and with requests left in its quota."""
        exhausted = self.recycle_after is not None and self.served >= self.recycle_after
        return self.alive and not self.retiring and not exhausted

    def boot_frame(self) -> frames.Boot:
        config = self.tenant.config
        return frames.Boot(
            tenant=self.tenant.id,
            tenant_dir=str(self.tenant.dir),
            script=config.script,
            bindings=self.tenant.bindings,
            secret_names=list(config.secrets),
            memory_mb=config.limits.memory_mb,
            cpu_seconds=config.limits.cpu_seconds,
            slowlog_ms=config.limits.slowlog_ms,
            max_frame_bytes=self.settings.max_frame_bytes,
            seccomp_program=self.sandbox.seccomp_program,
            scratch_dir=str(self.sandbox.scratch_dir_for(self.tenant.id)),
            uid=self.sandbox.uid_for(self.tenant.id),
        )

    async def read_ready(self) -> frames.Ready:
        """Wait for the first frame that is not a log line: it must be Ready."""
        while True:
            frame = await self.read_frame()
            if isinstance(frame, frames.Log):
                self.tenant_log.emit_message(self.tenant, self.pid, frame.message)
                self.boot_log = frame.message
                continue
            if isinstance(frame, frames.Ready):
                if frame.protocol != frames.PROTOCOL_VERSION:
                    raise ProtocolError(
                        f"worker speaks protocol {frame.protocol}, "
                        f"expected {frames.PROTOCOL_VERSION}"
                    )
                return frame
            raise ProtocolError(f"expected a ready frame, got {type(frame).__name__}")

    def boot_failure(self, exc: BaseException) -> WorkerBootFailed:
        """Explain why a worker never became ready, from its exit code."""
        code = self.process.returncode
        if code == frames.EXIT_LOAD_FAILED:
            reason = "the tenant's script failed to load; see the tenant's log"
        elif code == frames.EXIT_CONFINEMENT_FAILED:
            reason = "the worker could not confine itself"
        elif isinstance(exc, TimeoutError):
            limit = self.settings.startup_timeout_s
            reason = f"the worker was not ready within {limit:g} s"
        else:
            reason = f"the worker exited during start-up (exit code {code})"
        detail = f"{reason}: {self.load_error()}" if self.boot_log else reason
        log.error(
            "tenant %s: worker pid %d failed to boot: %s",
            self.tenant.id,
            self.pid,
            detail,
        )
        return WorkerBootFailed(reason, detail)

    def load_error(self) -> str:
        """Where and why the script failed, from the traceback it sent."""
        lines = [line for line in self.boot_log.splitlines() if line.strip()]
        where = ""
        for line in lines:
            found = TRACEBACK_FRAME.search(line)
            if found and found.group(1).startswith(str(self.tenant.dir)):
                name = found.group(1)[len(str(self.tenant.dir)) + 1 :]
                where = f"{name}, line {found.group(2)}: "
        last = lines[-1].strip() if lines else ""
        return redact(where + last, self.tenant)[:500]

    async def read_frame(self) -> frames.ToHost:
        """Read one frame from the worker, capped and strictly decoded."""
        stdout = self.process.stdout
        assert stdout is not None
        try:
            prefix = await stdout.readexactly(frames.LENGTH_PREFIX.size)
            length = frames.read_length(prefix, self.settings.max_frame_bytes)
            return self.decoder.decode(await stdout.readexactly(length))
        except asyncio.IncompleteReadError:
            raise WorkerCrashed("the worker exited") from None
        except (frames.FrameTooLarge, msgspec.DecodeError) as exc:
            raise ProtocolError(f"the worker sent a bad frame: {exc}") from None

    async def read_frames(self) -> None:
        """Route each frame to its waiting request until the worker is gone."""
        try:
            while True:
                self.accept(await self.read_frame())
        except WorkerCrashed:
            await self.stop_after_failure(await self.exit_error())
        except DispatchError as exc:
            await self.stop_after_failure(exc)

    async def watch_exit(self) -> None:
        """Notice an exit even while a child of the worker holds its pipes."""
        await self.process.wait()
        await self.stop_after_failure(await self.exit_error())

    async def exit_error(self) -> DispatchError:
        """The error for requests in flight on a worker that went away."""
        try:
            async with asyncio.timeout(EXIT_CODE_WAIT_S):
                code = await self.process.wait()
        except TimeoutError:
            return WorkerCrashed("the worker closed its pipe")
        if code == frames.EXIT_OUT_OF_MEMORY or code == -signal.SIGSEGV:
            return WorkerMemoryExceeded("the worker ran out of memory")
        if code == -signal.SIGXCPU:
            return WorkerCrashed("the worker used up its cpu_seconds budget")
        return WorkerCrashed(f"the worker exited (exit code {code})")

    def accept(self, frame: frames.ToHost) -> None:
        """Settle the request a Response or Failure answers; log the rest."""
        self.last_heard = time.monotonic()
        if isinstance(frame, frames.Pong):
            if frame.seq == self.ping_seq:
                self.ping_sent_at = None
            return
        if isinstance(frame, frames.Log):
            self.tenant_log.emit_message(self.tenant, self.pid, frame.message)
            return
        if isinstance(frame, frames.Ready):
            raise ProtocolError("the worker sent a second ready frame")
        if isinstance(frame, frames.Outbound):
            self.start_outbound(frame)
            return
        if isinstance(frame, frames.SlowRequest):
            self.record_slow_request(frame)
            return

        future = self.pending.pop(frame.id, None)
        if future is None or future.done():
            # Not in flight here: late after a timeout, or forged. Harmless.
            log.debug(
                "tenant %s pid %d answered unknown id %d",
                self.tenant.id,
                self.pid,
                frame.id,
            )
            return
        if isinstance(frame, frames.Failure):
            future.set_exception(failure_error(frame))
            return
        problem = response_problem(
            frame.status, frame.headers, frame.body, self.settings.max_body_bytes
        )
        if problem is not None:
            raise ProtocolError(f"the worker sent a response HTTP forbids: {problem}")
        future.set_result(frame)

    def record_slow_request(self, frame: frames.SlowRequest) -> None:
        """Log where a slow request is, once, if it is in flight here.

        The request id logged is the host's own; the worker only names the
        frame id, which must be one of its requests still in flight.
        """
        request_id = self.request_ids.get(frame.id)
        elapsed_ok = math.isfinite(frame.elapsed_ms) and frame.elapsed_ms >= 0
        if request_id is None or frame.id in self.slow_reported or not elapsed_ok:
            log.debug(
                "tenant %s pid %d sent a slow-request stack for id %d, "
                "not in flight or already sent",
                self.tenant.id,
                self.pid,
                frame.id,
            )
            return
        self.slow_reported.add(frame.id)
        self.tenant_log.record_slow_request(
            self.tenant, self.pid, request_id, frame.elapsed_ms, frame.stack
        )

    def start_outbound(self, frame: frames.Outbound) -> None:
        """Hand a call of tenant code to the gateway; answer when it is done.

        Only calls on behalf of a request in flight on this very worker are
        taken: the request id in a frame is the tenant's word, checked here.
        """
        problem = self.outbound_problem(frame.request_id)
        if problem is not None:
            result = frames.OutboundResult(
                frame.id, error="budget_exceeded", message=problem
            )
            self.write_outbound_result(result)
            return
        task = asyncio.create_task(self.run_outbound(frame))
        self.outbound_tasks.add(task)
        task.add_done_callback(self.outbound_tasks.discard)

    def outbound_problem(self, request_id: str) -> str | None:
        """Why a call for ``request_id`` is refused, or None; counts it."""
        if request_id not in self.request_ids.values():
            return "the request this call belongs to is not in flight"
        made = self.subrequests.get(request_id, 0) + 1
        self.subrequests[request_id] = made
        budget = self.tenant.config.egress.max_subrequests
        if made > budget:
            return f"more than {budget} outbound calls for one request"
        return None

    async def run_outbound(self, frame: frames.Outbound) -> None:
        """Answer one ctx.fetch or ctx.deliver; tenant code never waits in vain."""
        try:
            result = await self.outbound_gateway.handle(self.tenant, frame)
        except Exception:
            log.exception(
                "tenant %s: outbound call %d failed in the dispatcher",
                self.tenant.id,
                frame.id,
            )
            result = frames.OutboundResult(
                frame.id, error="internal_error", message="the dispatcher failed"
            )
        self.write_outbound_result(result)

    def write_outbound_result(self, result: frames.OutboundResult) -> None:
        if self.alive:
            with contextlib.suppress(WorkerCrashed):
                self.write(result)

    async def call(self, request: frames.Request) -> frames.Response:
        """Send one request and wait for its answer, within the time limit."""
        if not self.alive:
            raise WorkerCrashed("the worker exited")
        request.id = next(self.ids)
        self.request_ids[request.id] = request.request_id
        loop = asyncio.get_running_loop()
        future: asyncio.Future[frames.Response] = loop.create_future()
        self.pending[request.id] = future
        try:
            self.write(request)
        except WorkerCrashed as exc:
            await self.stop_after_failure(exc)
            raise

        self.last_used = time.monotonic()
        timeout_s = self.tenant.config.limits.timeout_ms / 1000
        try:
            async with asyncio.timeout(timeout_s):
                return await future
        except TimeoutError:
            self.pending.pop(request.id, None)
            await self.stop_after_timeout(request.id)
            raise WorkerTimeout(
                f"the tenant's script did not answer within {timeout_s:g} s"
            ) from None
        finally:
            self.request_ids.pop(request.id, None)
            self.subrequests.pop(request.request_id, None)
            self.slow_reported.discard(request.id)

    def write(self, frame: object) -> None:
        """Queue a frame to the worker; the transport never blocks the loop."""
        stdin = self.process.stdin
        assert stdin is not None
        if stdin.is_closing():
            raise WorkerCrashed("the worker's pipe is closed")
        stdin.write(frames.encode_frame(self.encoder, frame))

    def check_heartbeat(self, now: float, interval_s: float) -> bool:
        """Ping a quiet worker; False once a ping has gone unanswered too long.

        A worker busy with requests is not expected to answer sooner than
        its time limit, so the deadline is never shorter than that.
        """
        if self.ping_sent_at is not None:
            patience = max(2 * interval_s, self.tenant.config.limits.timeout_ms / 1000)
            return now - self.ping_sent_at < patience
        if now - self.last_heard >= interval_s:
            self.ping_seq += 1
            self.ping_sent_at = now
            try:
                self.write(frames.Ping(self.ping_seq))
            except WorkerCrashed:
                return False
        return True

    async def stop_after_timeout(self, request_id: int) -> None:
        """A request ran past its limit: the worker may be stuck, replace it."""
        log.warning(
            "tenant %s: request %d on pid %d ran past %d ms; stopping the worker",
            self.tenant.id,
            request_id,
            self.pid,
            self.tenant.config.limits.timeout_ms,
        )
        # XXX: other requests in flight on this worker fail with it. Sending
        # Cancel first and killing only an unresponsive worker would spare
        # them; that needs a heartbeat to tell "stuck" from "slow".
        self.exit_reason = self.exit_reason or "timeout"
        await self.stop_after_failure(
            WorkerCrashed("the worker was stopped: a request ran past its time limit")
        )

    async def stop_after_failure(self, error: DispatchError) -> None:
        """Fail every request in flight with ``error`` and end the process."""
        if not self.alive:
            return
        if not self.exit_reason:
            memory = isinstance(error, WorkerMemoryExceeded)
            self.exit_reason = "memory" if memory else "crash"
        self.mark_gone()
        failed = [future for future in self.pending.values() if not future.done()]
        for future in failed:
            future.set_exception(type(error)(error.message))
        self.pending.clear()
        await self.kill()

        if self.retiring and not failed:
            log.info("tenant %s: worker pid %d retired", self.tenant.id, self.pid)
            return
        log.warning(
            "tenant %s: worker pid %d is gone (%s: %s, exit code %s)",
            self.tenant.id,
            self.pid,
            error.code,
            error.message,
            self.process.returncode,
        )

    def mark_gone(self) -> None:
        """Take the worker out of service; the pool starts a fresh one."""
        if self.alive:
            self.alive = False
            self.on_exit(self)

    async def kill(self) -> None:
        """TERM, then KILL after the grace period; always reaps the child."""
        self.mark_gone()
        if self.process.returncode is None:
            self.signal_group(signal.SIGTERM)
            try:
                async with asyncio.timeout(self.settings.kill_grace_s):
                    await self.process.wait()
            except TimeoutError:
                pass
        # Whatever is left in the group - the worker itself, or a process it
        # forked - goes now.
        self.signal_group(signal.SIGKILL)
        await self.process.wait()
        self.close_pipes()

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the worker's process group, if any is left."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)

    def close_pipes(self) -> None:
        stdin = self.process.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()
        self.process.close()
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()

    async def shutdown(self, reason: str = "shutdown") -> None:
        """Stop gracefully: requests in flight finish, then the worker exits."""
        self.retiring = True
        self.exit_reason = self.exit_reason or reason
        if self.alive:
            try:
                self.write(frames.Shutdown())
                timeout_s = self.tenant.config.limits.timeout_ms / 1000
                async with asyncio.timeout(timeout_s):
                    await self.process.wait()
            except (TimeoutError, DispatchError):
                pass
        await self.kill()

    async def read_log(self) -> None:
        """Forward whatever the worker writes to fds 1 and 2 to its log."""
        stderr = self.process.stderr
        assert stderr is not None
        lines = self.tenant_log.line_splitter(self.tenant, self.pid)
        while chunk := await stderr.read(LOG_CHUNK_BYTES):
            lines.feed(chunk)
        lines.flush()


def failure_error(frame: frames.Failure) -> DispatchError:
    """The error a Failure frame stands for; unknown codes are not trusted."""
    error_class = FAILURE_CODES.get(frame.code)
    if error_class is None:
        return ProtocolError(f"the worker sent an unknown failure code {frame.code!r}")
    return error_class(frame.message[:1000])
