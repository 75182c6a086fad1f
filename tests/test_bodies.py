"""Request and response bodies: sizes, concurrency, limits, keep-alive."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import httpx
import pytest

from tests.conftest import DispatcherProcess, error_of, raw_exchange

KiB = 1024
MiB = 1024 * KiB
MAX_BODY = 16 * MiB
ECHO = {"x-customer-id": "echo"}


@pytest.mark.parametrize(
    "size", [0, 1, 64 * KiB - 1, 64 * KiB, 64 * KiB + 1, MiB, MAX_BODY]
)
async def test_body_round_trips_byte_exact(
    client: httpx.AsyncClient, size: int
) -> None:
    """Whatever bytes a client sends are the bytes the tenant gets."""
    body = os.urandom(size)

    response = await client.post("/", headers=ECHO, content=body)

    assert response.status_code == 200
    assert response.content == body


async def test_five_largest_bodies_at_once_do_not_deadlock(
    client: httpx.AsyncClient,
) -> None:
    """Big frames in both directions at once on one worker still flow."""
    bodies = [os.urandom(MAX_BODY) for _ in range(5)]

    responses = await asyncio.wait_for(
        asyncio.gather(*(client.post("/", headers=ECHO, content=b) for b in bodies)),
        timeout=60,
    )

    assert [r.content == b for r, b in zip(responses, bodies, strict=True)] == [
        True
    ] * 5


async def test_body_over_limit_is_413_before_any_worker(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess
) -> None:
    """A too-large body is refused by size alone."""
    response = await client.post(
        "/", headers={"x-customer-id": "crasher"}, content=b"x" * (MAX_BODY + 1)
    )

    assert response.status_code == 413
    assert error_of(response)["code"] == "payload_too_large"


async def test_chunked_body_over_limit_is_413(client: httpx.AsyncClient) -> None:
    """Without a Content-Length the limit is counted while reading."""

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(17):
            yield b"y" * MiB

    response = await client.post("/", headers=ECHO, content=chunks())

    assert response.status_code == 413
    assert error_of(response)["code"] == "payload_too_large"


def http_exchange(sock: socket.socket, request: bytes) -> bytes:
    """Send one request on an open connection and read one whole response."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":")[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
    )
    while len(rest) < length:
        rest += sock.recv(65536)
    return head + b"\r\n\r\n" + rest


async def test_unread_body_keeps_the_connection_usable(
    dispatcher: DispatcherProcess,
) -> None:
    """A tenant that ignores the body still answers; keep-alive survives."""
    host, port = dispatcher.url.removeprefix("http://").split(":")
    body = b"z" * (256 * KiB)
    first = (
        b"POST /ignore-body HTTP/1.1\r\nHost: t\r\nx-customer-id: echo\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body
    second = b"GET /pid HTTP/1.1\r\nHost: t\r\nx-customer-id: echo\r\n\r\n"

    def exchange_twice() -> tuple[bytes, bytes]:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            return http_exchange(sock, first), http_exchange(sock, second)

    answer_one, answer_two = await asyncio.to_thread(exchange_twice)

    assert answer_one.startswith(b"HTTP/1.1 200")
    assert answer_one.endswith(b"ignored")
    assert answer_two.startswith(b"HTTP/1.1 200")
    assert b'"pid"' in answer_two


async def test_body_that_never_finishes_is_408(dispatcher: DispatcherProcess) -> None:
    """A client trickling its body cannot hold the dispatcher's memory forever."""
    request = (
        b"POST / HTTP/1.1\r\nHost: t\r\nx-customer-id: echo\r\n"
        b"Content-Length: 100\r\n\r\nonly ten b"
    )

    started = time.monotonic()
    answer = await asyncio.to_thread(raw_exchange, dispatcher.url, request)

    assert answer.startswith(b"HTTP/1.1 408")
    assert b'"request_timeout"' in answer
    assert time.monotonic() - started < 6
