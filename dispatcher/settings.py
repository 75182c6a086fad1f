"""Platform-wide settings of one dispatcher process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sandbox_runner.frames import FRAME_OVERHEAD_BYTES

MiB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """What ``switchyard run`` was told, with the platform defaults."""

    tenants_dir: Path = Path("tenants")
    state_dir: Path = Path("state")
    host: str = "127.0.0.1"
    port: int = 8787
    # The largest request body a tenant is sent; larger ones get 413 before
    # any worker sees them. Responses are held to the same size.
    max_body_bytes: int = 16 * MiB
    # A body must arrive whole within this long (408 otherwise).
    body_timeout_s: float = 30.0
    # Bytes of request bodies held at once, all clients together (503 past).
    max_held_body_bytes: int = 512 * MiB
    # How long a new worker may take to import its script and say Ready.
    startup_timeout_s: float = 10.0
    # How long a worker gets to exit after SIGTERM before SIGKILL.
    kill_grace_s: float = 1.0
    # A tenant whose worker failed to boot is not retried for this long.
    boot_retry_after_s: float = 5.0
    access_log: bool = True
    # Reload a tenant when its folder changes.
    watch: bool = True
    # Host-wide bounds on warm workers, over every tenant's settings.
    max_warm_workers: int = 2000
    # 0: half of the machine's memory.
    max_workers_memory_mb: int = 0
    supervise_interval_s: float = 1.0
    # A worker quiet for this long is pinged.
    heartbeat_s: float = 5.0
    # Networks tenants may call although they are private (tests: loopback).
    private_egress: tuple[str, ...] = ()
    # Host name to the region it serves from, for tenants' region rules.
    egress_regions: tuple[tuple[str, str], ...] = ()
    # Below 1, delivery backoff runs that much faster (tests only).
    delivery_time_scale: float = 1.0
    # Fork workers from a pre-imported zygote (fast) rather than exec a
    # fresh interpreter for each.
    zygote: bool = True

    @property
    def max_frame_bytes(self) -> int:
        """The largest frame either side may send: a full body plus headers."""
        return self.max_body_bytes + FRAME_OVERHEAD_BYTES
