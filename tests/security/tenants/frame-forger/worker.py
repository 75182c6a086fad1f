"""Hostile tenant: attacks the frame channel it shares with the runner.

Frames go out on fd 61 and come in on fd 60; fds 1 and 2 are its log.
"""

import os
import struct
import sys

import msgspec

from sandbox_runner import frames

FRAME_IN_FD = 60
FRAME_OUT_FD = 61
FORGED_BODY = b"forged by frame-forger"
FLOOD_BYTES = 20 * 1024 * 1024
encoder = msgspec.msgpack.Encoder()


def send(frame):
    """Write a whole frame, though the runner keeps the pipe non-blocking."""
    data = memoryview(frames.encode_frame(encoder, frame))
    os.set_blocking(FRAME_OUT_FD, True)
    try:
        while data:
            data = data[os.write(FRAME_OUT_FD, data) :]
    finally:
        os.set_blocking(FRAME_OUT_FD, False)


def forge_response():
    # Ids are counted per worker from 1; these are far past any in flight.
    for request_id in (10**6, 2**31 - 1):
        send(frames.Response(request_id, 200, [], FORGED_BODY))
    return {"pid": os.getpid()}


def forge_slow_request():
    stack = [frames.StackEntry("forged.py", 1, "forged", "forged stack line")]
    send(frames.SlowRequest(10**6, 1.0, stack))
    return {"pid": os.getpid()}


def write_malformed_slow_request():
    send({"t": "slow_request", "id": 1, "elapsed_ms": "soon", "stack": []})
    return {"pid": os.getpid()}


def write_oversized_slow_request():
    # Far over the 32 entries a worker may send: the host refuses it while
    # decoding, before it costs more than the bytes themselves.
    entry = {"file": "x.py", "line": 1, "function": "f", "code": "x" * 200}
    send({"t": "slow_request", "id": 1, "elapsed_ms": 1.0, "stack": [entry] * 5000})
    return {"pid": os.getpid()}


def forge_ready():
    send(frames.Ready(frames.PROTOCOL_VERSION, 1, 0.0, ["none"]))
    return {"pid": os.getpid()}


def write_garbage():
    os.write(FRAME_OUT_FD, struct.pack(">I", 6) + b"\xc1garbg")
    return {"pid": os.getpid()}


def close_fd(fd):
    os.close(fd)
    return {"closed": fd}


def flood_log():
    """20 MiB on fds 1 and 2, then 16 MiB more in Log frames.

    On fds 1 and 2: one endless line, then very many short ones.
    """
    endless = b"x" * (1024 * 1024)
    for _ in range(5):
        os.write(1, endless)
    os.write(1, b"\n")
    written = 5 * len(endless)
    short = b"flood line from frame-forger\n" * 35000
    while written < FLOOD_BYTES:
        os.write(2, short)
        print("printed flood line", file=sys.stdout)
        written += len(short)
    lines = "log frame line from frame-forger\n" * 120000
    for _ in range(4):
        send(frames.Log(level="info", message=lines))
        written += len(lines)
    return {"flooded_bytes": written}


ATTACKS = {
    "/foreign-response": forge_response,
    "/ready": forge_ready,
    "/foreign-slow-request": forge_slow_request,
    "/malformed-slow-request": write_malformed_slow_request,
    "/oversized-slow-request": write_oversized_slow_request,
    "/garbage": write_garbage,
    "/close-frame-in": lambda: close_fd(FRAME_IN_FD),
    "/close-frame-out": lambda: close_fd(FRAME_OUT_FD),
    "/flood": flood_log,
}


async def fetch(request, env, ctx):
    if request.path in ATTACKS:
        return ATTACKS[request.path]()
    print(f"ping from frame-forger pid {os.getpid()}")
    return {"pid": os.getpid()}
