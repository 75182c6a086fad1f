"""How worker processes come to life: forked by the zygote, or exec'd fresh.

``ZygoteLauncher`` asks a pre-imported fork server for each worker (see
``sandbox_runner/zygote.py``): a cold start costs a fork and the tenant's
confinement and import, a few milliseconds. ``ExecLauncher`` starts a fresh
interpreter per worker, tens of milliseconds; it stays as the fallback and
as the baseline ``make bench`` compares the zygote against.

XXX: forked workers share the zygote's string hash key and address layout,
which a fresh interpreter would randomise (see the README's Limitations).
A key cannot be changed after fork: every string already hashed would then
land in the wrong dict slot. Several zygotes, each serving a share of the
tenants and replaced on a schedule, would narrow who shares a key with
whom.

Both hand back a ``WorkerProcess``: a pid, the three pipe streams, and a way
to wait for the exit code. A forked worker is the zygote's child, not ours,
so the zygote reaps it and reports its exit code over the control socket.

The dispatcher heals its zygote. One that died is started again by the
next launch or readiness check. One that hangs (stopped, stuck) is told
from a busy one by silence: no pong to a readiness ping within a second,
or no pid for a spawn within SPAWN_TIMEOUT_S, and no other word from it
meanwhile. It is then killed by its pid and its workers die with it: a
hung zygote could never report their exits, so they could not be reaped.
The readiness check answers 503 and starts a new zygote at once; a launch
fails with HostCannotStart (503, the tenant not backed off) and the next
launch starts one.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import itertools
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import NoReturn, Protocol

from dispatcher.errors import HostCannotStart

log = logging.getLogger("dispatcher.launcher")

# The worker's environment is this and nothing else. Capping glibc's malloc
# arenas keeps threads from reserving 64 MiB each against RLIMIT_AS.
WORKER_ENVIRONMENT = {"MALLOC_ARENA_MAX": "2"}
PYTHON = (sys.executable, "-I", "-B")
STREAM_LIMIT = 1024 * 1024
# A zygote answers in microseconds; one silent this long is hung, not busy.
PING_TIMEOUT_S = 1.0
SPAWN_TIMEOUT_S = 5.0
ZYGOTE_START_TIMEOUT_S = 30.0


class WorkerProcess(Protocol):
    """What the pool needs of a worker process, however it was started."""

    pid: int
    stdin: asyncio.StreamWriter | None
    stdout: asyncio.StreamReader | None
    stderr: asyncio.StreamReader | None

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def close(self) -> None:
        """Close our ends of the pipes, once the process is gone."""


class Launcher(Protocol):
    """Starts worker processes."""

    async def launch(self, cwd: Path) -> WorkerProcess: ...

    async def readiness(self) -> str:
        """``up``, ``started``, ``not used``, or why workers could not start."""
        ...

    async def close(self) -> None: ...


class ExecProcess:
    """A worker we exec'd ourselves: asyncio's process, closed by asyncio."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.pid = process.pid
        self.stdin = process.stdin
        self.stdout = process.stdout
        self.stderr = process.stderr

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def wait(self) -> int:
        return await self.process.wait()

    def close(self) -> None:
        # asyncio closes a subprocess's pipes itself once it has exited.
        pass


class ExecLauncher:
    """One fresh ``python -m sandbox_runner`` per worker."""

    async def readiness(self) -> str:
        return "not used"

    async def launch(self, cwd: Path) -> WorkerProcess:
        try:
            process = await asyncio.create_subprocess_exec(
                *PYTHON,
                "-m",
                "sandbox_runner",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=WORKER_ENVIRONMENT,
                cwd=cwd,
                limit=STREAM_LIMIT,
                start_new_session=True,
            )
        except OSError as exc:
            raise host_cannot_start(exc) from None
        return ExecProcess(process)

    async def close(self) -> None:
        pass


def host_cannot_start(reason: object) -> HostCannotStart:
    """Out of processes or descriptors, or no zygote: not the tenant's fault."""
    log.error("cannot start a worker: %s", reason)
    return HostCannotStart("the host could not start a worker")


class ForkedProcess:
    """A worker forked by the zygote: pipes ours, exit code reported to us."""

    def __init__(self, pid: int, exit_code: asyncio.Future[int]) -> None:
        self.pid = pid
        self.exit_code = exit_code
        self.stdin: asyncio.StreamWriter | None = None
        self.stdout: asyncio.StreamReader | None = None
        self.stderr: asyncio.StreamReader | None = None
        self.transports: list[asyncio.BaseTransport] = []

    @property
    def returncode(self) -> int | None:
        return self.exit_code.result() if self.exit_code.done() else None

    async def wait(self) -> int:
        return await asyncio.shield(self.exit_code)

    async def attach_pipes(self, to_worker: int, from_worker: int, log: int) -> None:
        """Wrap our ends of the three pipes in asyncio streams."""
        loop = asyncio.get_running_loop()
        self.stdout = await self.read_stream(loop, from_worker)
        self.stderr = await self.read_stream(loop, log)
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(to_worker, "wb", buffering=0)
        )
        self.transports.append(transport)
        self.stdin = asyncio.StreamWriter(transport, protocol, None, loop)

    async def read_stream(
        self, loop: asyncio.AbstractEventLoop, fd: int
    ) -> asyncio.StreamReader:
        reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader, loop=loop),
            os.fdopen(fd, "rb", buffering=0),
        )
        self.transports.append(transport)
        return reader

    def close(self) -> None:
        # A read pipe closes itself at end of file, but a reader stopped
        # before that point would hold its descriptor until collected.
        for transport in self.transports:
            transport.close()


class ZygoteLauncher:
    """Forks workers from one pre-imported fork server; see the module note."""

    def __init__(self) -> None:
        self.control: socket.socket | None = None
        self.process: asyncio.subprocess.Process | None = None
        self.tokens = itertools.count(1)
        self.spawning: dict[int, asyncio.Future[int]] = {}
        self.running: dict[int, asyncio.Future[int]] = {}
        self.pongs: dict[int, asyncio.Future[int]] = {}
        # When the zygote last said anything: a busy one is not a hung one.
        self.last_heard = 0.0
        self.lock = asyncio.Lock()

    async def started(self) -> socket.socket:
        """The zygote's control socket; the zygote is started if need be."""
        async with self.lock:
            return self.control or await self.start()

    async def start(self) -> socket.socket:
        """Start the zygote and wait until it has imported everything."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with theirs:
                self.process = await self.spawn_zygote(theirs)
            ours.setblocking(False)
            await self.wait_until_ready(ours)
        except BaseException:
            ours.close()
            raise

        asyncio.get_running_loop().add_reader(ours, self.read_reports)
        self.control = ours
        self.last_heard = time.monotonic()
        log.info("zygote started, pid %d", self.process.pid)
        return ours

    async def spawn_zygote(self, theirs: socket.socket) -> asyncio.subprocess.Process:
        os.set_inheritable(theirs.fileno(), True)
        return await asyncio.create_subprocess_exec(
            *PYTHON,
            "-m",
            "sandbox_runner.zygote",
            str(theirs.fileno()),
            env=WORKER_ENVIRONMENT,
            pass_fds=(theirs.fileno(),),
            start_new_session=True,
        )

    async def wait_until_ready(self, control: socket.socket) -> None:
        """Wait for the zygote's ``ready``; kill it if it never comes."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(ZYGOTE_START_TIMEOUT_S):
                ready = await loop.sock_recv(control, 64)
            if ready != b"ready":
                raise RuntimeError(f"the zygote did not start ({ready!r})")
        except BaseException:
            await self.kill_zygote()
            raise

    async def launch(self, cwd: Path) -> WorkerProcess:
        """Fork one worker; ``cwd`` is set by the worker itself from Boot."""
        try:
            control = await self.started()
        except (OSError, RuntimeError, TimeoutError) as exc:
            raise host_cannot_start(f"the zygote cannot start: {exc}") from None

        to_worker, from_worker, log_pipe = open_pipes(3)
        theirs = [to_worker[0], from_worker[1], log_pipe[1]]
        ours = [to_worker[1], from_worker[0], log_pipe[0]]
        try:
            pid = await self.fork_worker(control, theirs)
        except BaseException:
            close_all(ours)
            raise
        finally:
            close_all(theirs)  # the zygote got its own copies, or none

        process = ForkedProcess(pid, self.running.setdefault(pid, spawned_exit()))
        await process.attach_pipes(*ours)
        return process

    async def fork_worker(self, control: socket.socket, fds: list[int]) -> int:
        """Have the zygote fork a worker on ``fds``; its pid."""
        token = next(self.tokens)
        spawned: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.spawning[token] = spawned
        asked_at = time.monotonic()
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        try:
            control.sendmsg([b"spawn %d" % token], rights)
            async with asyncio.timeout(SPAWN_TIMEOUT_S):
                return await spawned
        except TimeoutError:
            await self.spawn_timed_out(control, asked_at)
        except OSError as exc:
            raise host_cannot_start(exc) from None
        finally:
            self.spawning.pop(token, None)

    async def spawn_timed_out(
        self, control: socket.socket, asked_at: float
    ) -> NoReturn:
        """No pid in time: replace a zygote that went silent, and say so."""
        if self.last_heard < asked_at:
            await self.replace_hung_zygote(control)
        limit = f"{SPAWN_TIMEOUT_S:g} s"
        raise host_cannot_start(f"the zygote forked no worker within {limit}")

    async def readiness(self) -> str:
        """``up``; a dead zygote is started and a hung one replaced, and said so."""
        control = self.control
        if control is not None and await self.ping(control):
            return "up"
        replaced = control is not None and await self.replace_hung_zygote(control)
        try:
            await self.started()
        except (OSError, RuntimeError, TimeoutError) as exc:
            log.error("the zygote cannot start: %s", exc)
            return f"down: {exc}"
        return "not answering; replaced" if replaced else "started"

    async def ping(self, control: socket.socket) -> bool:
        """True when the zygote answers within PING_TIMEOUT_S, or is busy."""
        token = next(self.tokens)
        pong: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.pongs[token] = pong
        asked_at = time.monotonic()
        try:
            control.send(b"ping %d" % token)
            async with asyncio.timeout(PING_TIMEOUT_S):
                await pong
        except (OSError, TimeoutError):
            # A zygote forking a burst of workers answers them first: any
            # word from it since the ping shows it is alive.
            return self.last_heard >= asked_at
        finally:
            self.pongs.pop(token, None)
        return True

    async def replace_hung_zygote(self, control: socket.socket) -> bool:
        """Kill a zygote that stopped answering; False if it was gone already.

        Its workers die with it (each asked the kernel for that at
        start-up): a hung zygote could no longer report their exits, so
        they could not be reaped. Their tenants' next requests start
        fresh workers.
        """
        async with self.lock:
            if self.control is not control:
                return False  # it died, or another caller replaced it
            self.forget_zygote()
            if self.process is None or self.process.returncode is not None:
                return False
            pid = self.process.pid
            log.error("the zygote, pid %d, stopped answering: killing it", pid)
            await self.kill_zygote()
            return True

    def read_reports(self) -> None:
        """Settle spawns, exits and pongs; notice if the zygote died."""
        assert self.control is not None
        try:
            message = self.control.recv(256)
        except BlockingIOError:
            return
        if not message:
            log.error("the zygote exited; its workers exited with it")
            self.forget_zygote()
            return
        self.last_heard = time.monotonic()
        kind, *fields = message.split()
        if kind == b"spawned":
            settle(self.spawning.get(int(fields[0])), int(fields[1]))
        elif kind == b"failed":
            refused = OSError("the zygote could not fork a worker")
            fail(self.spawning.get(int(fields[0])), refused)
        elif kind == b"exited":
            pid, code = int(fields[0]), int(fields[1])
            settle(self.running.setdefault(pid, spawned_exit()), code)
            self.running.pop(pid, None)
        elif kind == b"pong":
            settle(self.pongs.get(int(fields[0])), 0)

    def forget_zygote(self) -> None:
        """Let go of the zygote: its workers are gone, spawns will not come."""
        assert self.control is not None
        asyncio.get_running_loop().remove_reader(self.control)
        self.control.close()
        self.control = None
        gone = OSError("the zygote is gone")
        for future in [*self.spawning.values(), *self.pongs.values()]:
            fail(future, gone)
        for future in self.running.values():
            settle(future, -9)
        self.running.clear()

    async def kill_zygote(self) -> None:
        """SIGKILL the zygote by its pid, and reap it."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()

    async def close(self) -> None:
        """Stop the zygote once the pool has stopped every worker."""
        if self.control is not None:
            asyncio.get_running_loop().remove_reader(self.control)
            self.control.close()
            self.control = None
        if self.process is not None:
            try:
                async with asyncio.timeout(5):
                    await self.process.wait()
            except TimeoutError:
                await self.kill_zygote()


def open_pipes(count: int) -> list[tuple[int, int]]:
    """``count`` pipes; none, and HostCannotStart, when out of descriptors."""
    pipes: list[tuple[int, int]] = []
    try:
        for _ in range(count):
            pipes.append(os.pipe2(os.O_CLOEXEC))
    except OSError as exc:
        close_all([fd for pipe in pipes for fd in pipe])
        raise host_cannot_start(exc) from None
    return pipes


def close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def settle(future: asyncio.Future[int] | None, value: int) -> None:
    if future is not None and not future.done():
        future.set_result(value)


def fail(future: asyncio.Future[int] | None, error: BaseException) -> None:
    if future is not None and not future.done():
        future.set_exception(error)


def spawned_exit() -> asyncio.Future[int]:
    return asyncio.get_running_loop().create_future()
