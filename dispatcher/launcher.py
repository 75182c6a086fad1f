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
"""

from __future__ import annotations

import array
import asyncio
import itertools
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Protocol

from dispatcher.errors import HostCannotStart

log = logging.getLogger("dispatcher.launcher")

# The worker's environment is this and nothing else. Capping glibc's malloc
# arenas keeps threads from reserving 64 MiB each against RLIMIT_AS.
WORKER_ENVIRONMENT = {"MALLOC_ARENA_MAX": "2"}
PYTHON = (sys.executable, "-I", "-B")
STREAM_LIMIT = 1024 * 1024


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
        """``up``, ``not used``, or why workers cannot start now."""
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
        self.lock = asyncio.Lock()

    async def start(self) -> None:
        """Start the zygote and wait until it has imported everything."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        os.set_inheritable(theirs.fileno(), True)
        self.process = await asyncio.create_subprocess_exec(
            *PYTHON,
            "-m",
            "sandbox_runner.zygote",
            str(theirs.fileno()),
            env=WORKER_ENVIRONMENT,
            pass_fds=(theirs.fileno(),),
            start_new_session=True,
        )
        theirs.close()
        ours.setblocking(False)
        self.control = ours

        loop = asyncio.get_running_loop()
        async with asyncio.timeout(30):
            ready = await loop.sock_recv(ours, 64)
        if ready != b"ready":
            raise RuntimeError(f"the zygote did not start ({ready!r})")
        loop.add_reader(ours, self.read_reports)
        log.info("zygote started, pid %d", self.process.pid)

    async def launch(self, cwd: Path) -> WorkerProcess:
        """Fork one worker; ``cwd`` is set by the worker itself from Boot."""
        try:
            async with self.lock:
                if self.control is None:
                    await self.start()
        except (OSError, RuntimeError, TimeoutError) as exc:
            raise host_cannot_start(f"the zygote cannot start: {exc}") from None

        to_worker, from_worker, log_pipe = open_pipes(3)
        theirs = [to_worker[0], from_worker[1], log_pipe[1]]
        token = next(self.tokens)
        spawned: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.spawning[token] = spawned
        try:
            self.send_spawn(token, theirs)
            pid = await asyncio.wait_for(spawned, 10)
        except (OSError, TimeoutError) as exc:
            for fd in [*theirs, to_worker[1], from_worker[0], log_pipe[0]]:
                os.close(fd)
            raise host_cannot_start(OSError(str(exc))) from None
        finally:
            self.spawning.pop(token, None)
        for fd in theirs:
            os.close(fd)

        process = ForkedProcess(pid, self.running.setdefault(pid, spawned_exit()))
        await process.attach_pipes(to_worker[1], from_worker[0], log_pipe[0])
        return process

    async def readiness(self) -> str:
        """``up``; or, with the zygote gone, start it again and say so."""
        if self.control is not None:
            return "up"
        try:
            async with self.lock:
                if self.control is None:
                    await self.start()
        except (OSError, RuntimeError, TimeoutError) as exc:
            log.error("the zygote cannot start: %s", exc)
            return f"down: {exc}"
        return "started"

    def send_spawn(self, token: int, fds: list[int]) -> None:
        if self.control is None:
            raise OSError("the zygote is gone")
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        self.control.sendmsg([b"spawn %d" % token], rights)

    def read_reports(self) -> None:
        """Settle spawns and exits the zygote reports; notice if it died."""
        assert self.control is not None
        try:
            message = self.control.recv(256)
        except BlockingIOError:
            return
        if not message:
            self.zygote_lost()
            return
        kind, *fields = message.split()
        if kind == b"spawned":
            self.settle(self.spawning.get(int(fields[0])), int(fields[1]))
        elif kind == b"exited":
            pid, code = int(fields[0]), int(fields[1])
            self.settle(self.running.setdefault(pid, spawned_exit()), code)
            self.running.pop(pid, None)

    def settle(self, future: asyncio.Future[int] | None, value: int) -> None:
        if future is not None and not future.done():
            future.set_result(value)

    def zygote_lost(self) -> None:
        """Every worker died with the zygote; the next launch starts anew."""
        log.error("the zygote exited; its workers exited with it")
        assert self.control is not None
        asyncio.get_running_loop().remove_reader(self.control)
        self.control.close()
        self.control = None
        for future in [*self.spawning.values(), *self.running.values()]:
            if not future.done():
                future.set_result(-9)
        self.running.clear()

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
                self.process.kill()
                await self.process.wait()


def open_pipes(count: int) -> list[tuple[int, int]]:
    """``count`` pipes; none, and HostCannotStart, when out of descriptors."""
    pipes: list[tuple[int, int]] = []
    try:
        for _ in range(count):
            pipes.append(os.pipe2(os.O_CLOEXEC))
    except OSError as exc:
        for fd in [fd for pipe in pipes for fd in pipe]:
            os.close(fd)
        raise host_cannot_start(exc) from None
    return pipes


def spawned_exit() -> asyncio.Future[int]:
    return asyncio.get_running_loop().create_future()
