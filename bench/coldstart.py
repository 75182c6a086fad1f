"""Cold starts and idle memory: zygote beside plain spawn beside workerd.

Three servers run at once, each with tenants c0 .. c<N>: switchyard
forking its workers from the zygote, switchyard exec'ing a fresh
interpreter per worker (``--no-zygote``), and workerd creating an isolate
per tenant on its first request (the peer's ``loader`` mode). A request to
the last tenant first starts each server's own machinery - the zygote,
workerd's dispatcher isolate - so that it is not billed to a tenant. Then
each of the other tenants gets its first request, server after server in
turn: a cold start each. Afterwards every worker has served one request
and sits idle, which is when the memory rows measure them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

import psutil
from latency import Latencies, interleaved
from memory import fit_row, idle_worker_rows, measure_workers, worker_processes
from report import Row, format_ms, format_ratio, goal_cell, log_progress, skipped
from servers import Server, ServerFailed, Servers, write_tenants

ZYGOTE = "cold start, zygote (fork)"
SPAWN = "cold start, plain spawn (--no-zygote)"
PEER = "workerd loader, first request (its cold start)"
GOAL_P50_MS = 10.0
CONFINED = re.compile(r"confined by (.+)$", re.MULTILINE)


def run_cold_starts(
    servers: Servers, folder: Path, serve_sh: Path, count: int
) -> list[Row]:
    """Start the three servers, time ``count`` cold starts on each, stop them."""
    tenants_dir = folder / "cold-tenants"
    write_tenants(tenants_dir, count + 1)
    first = f"c{count}"
    started = {
        ZYGOTE: servers.start_switchyard(
            "cold zygote", tenants_dir, ["--no-access-log"], first
        ),
        SPAWN: servers.start_switchyard(
            "cold spawn", tenants_dir, ["--no-access-log", "--no-zygote"], first
        ),
    }
    peer, peer_reason = start_peer_loader(servers, serve_sh, count + 1)
    if peer is not None:
        started[PEER] = peer

    log_progress(f"cold starts: {count} fresh tenants on each of {len(started)}")
    peer_before = rss(peer)
    tenants = [f"c{index}" for index in range(count)]
    latencies = interleaved({name: s.port for name, s in started.items()}, tenants)
    peer_per_tenant = (rss(peer) - peer_before) / count if peer else None

    forked = measure_workers(worker_processes(started[ZYGOTE], zygote=True))
    spawned = measure_workers(worker_processes(started[SPAWN], zygote=False))
    rows = cold_start_rows(latencies, confinement(started[ZYGOTE]), peer_reason)
    rows += idle_worker_rows(forked, spawned, peer_per_tenant)
    rows.append(fit_row(forked, spawned))

    for server in started.values():
        servers.stop(server)
    return rows


def start_peer_loader(
    servers: Servers, serve_sh: Path, tenants: int
) -> tuple[Server | None, str]:
    """workerd in loader mode, or None and the reason it is not running."""
    reason = peer_missing(serve_sh)
    if reason:
        return None, reason
    try:
        return servers.start_peer(serve_sh, tenants, "loader"), ""
    except ServerFailed as exc:
        return None, str(exc)


def peer_missing(serve_sh: Path) -> str:
    """Why the peer cannot run here, or "" when it may."""
    if not serve_sh.is_file():
        return f"no {serve_sh}"
    for tool in ("node", "npm", "bash"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return ""


def rss(server: Server | None) -> int:
    """Resident size of a server's own process (workerd: all its isolates)."""
    if server is None:
        return 0
    with contextlib.suppress(psutil.NoSuchProcess):
        return int(psutil.Process(server.pid).memory_info().rss)
    return 0


def confinement(server: Server) -> str:
    """The layers the server's first worker reported, uid number left out."""
    found = CONFINED.search(server.log_path.read_text(errors="replace"))
    if not found:
        return "unknown (no worker start logged)"
    layers = re.sub(r"uid \d+", "own uid", found.group(1).strip())
    layers = re.sub(r"/tmp/switchyard-bench-\w+", "the run's folder", layers)
    who = "as root" if os.geteuid() == 0 else "not as root: partial"
    return f"{who}: {layers}"


def cold_start_rows(
    latencies: dict[str, Latencies], layers: str, peer_reason: str
) -> list[Row]:
    """Zygote beside plain spawn beside workerd's loader, by p50 and p99."""
    forked, spawned = latencies[ZYGOTE], latencies[SPAWN]
    peer = latencies.get(PEER)
    p50 = forked.percentile(0.5)

    ratios = [f"{format_ratio(p50 / spawned.percentile(0.5))} plain spawn (p50)"]
    if peer is not None and peer.samples_ms:
        ratios.append(f"{format_ratio(p50 / peer.percentile(0.5))} workerd (p50)")
    goal = goal_cell(f"p50 <= {GOAL_P50_MS:.0f} ms", p50 <= GOAL_P50_MS)
    forked_row = latency_row(ZYGOTE, forked, f"full confinement ({layers})")
    rows = [
        replace(forked_row, ratio="; ".join(ratios), goal=goal),
        latency_row(SPAWN, spawned, "the same confinement"),
    ]
    if peer is None:
        rows.append(skipped(PEER, peer_reason))
    else:
        note = "an isolate in workerd's one process; no per-tenant CPU or memory limit"
        rows.append(latency_row(PEER, peer, note))
    return rows


def latency_row(name: str, latencies: Latencies, note: str) -> Row:
    notes = note
    if latencies.failed:
        notes += f"; {latencies.failed} requests failed"
    return Row(
        name,
        f"{len(latencies.samples_ms)} fresh tenants, one request each",
        format_ms(latencies.percentile(0.5)),
        format_ms(latencies.percentile(0.99)),
        notes=notes,
    )
