"""The host's half of confinement: what each worker is told to apply.

The dispatcher compiles the seccomp filter once at start-up (see
``sandbox_runner/seccomp.py`` for what it allows), and when it runs as root
gives every tenant a uid of its own and a scratch folder. Workers apply all
of it themselves, in ``sandbox_runner/confine.py``.

A distinct uid per tenant means one tenant's threads never count against
another's process limit, and the kernel's own permission checks stand
between tenants in addition to Landlock. Uids come from a hash of the
tenant id into a range no system account uses; two tenants can share one by
collision (about 1 in 100,000 per pair), and then only Landlock and seccomp
separate them.
"""

from __future__ import annotations

import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

from sandbox_runner import seccomp

log = logging.getLogger("dispatcher.sandbox")

TENANT_UID_BASE = 200_000
TENANT_UID_SPAN = 100_000


class SandboxUnavailable(RuntimeError):
    """The machine cannot confine workers; the dispatcher must not start."""


@dataclass(frozen=True)
class SandboxPolicy:
    """What every worker of this dispatcher is told to apply."""

    seccomp_program: bytes
    as_root: bool
    scratch_root: Path

    def uid_for(self, tenant_id: str) -> int | None:
        """The tenant's own uid when workers can drop to one, else None."""
        if not self.as_root:
            return None
        return TENANT_UID_BASE + zlib.crc32(tenant_id.encode()) % TENANT_UID_SPAN

    def scratch_dir_for(self, tenant_id: str) -> Path:
        """The tenant's scratch folder, made on first use."""
        folder = self.scratch_root / tenant_id
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        return folder.resolve()


def build_sandbox_policy(state_dir: Path) -> SandboxPolicy:
    """Compile the filter and decide on uids; refuse to run unconfined."""
    try:
        program = seccomp.build_program()
    except (ImportError, OSError, RuntimeError) as exc:
        raise SandboxUnavailable(
            f"cannot build the seccomp filter ({exc}); install the system "
            "package libseccomp2 (Debian: apt-get install libseccomp2)"
        ) from exc

    as_root = os.geteuid() == 0
    if not as_root:
        log.warning(
            "not running as root: workers keep the dispatcher's uid; "
            "Landlock and seccomp still apply"
        )
    scratch_root = state_dir.resolve() / "scratch"
    return SandboxPolicy(program, as_root, scratch_root)
