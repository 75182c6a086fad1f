"""``switchyard doctor``: which confinement layers this machine gives workers.

Rather than guess from kernel versions, it starts a real worker for a
throwaway tenant, under the same policy ``switchyard run`` would use, and
prints the layers that worker reports having applied, beside what the
kernel offers. It exits non-zero when the worker could not load the
seccomp filter: without it the dispatcher must not serve tenant code.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from dispatcher.errors import DispatchError
from dispatcher.launcher import ExecLauncher
from dispatcher.sandbox import (
    SandboxPolicy,
    SandboxUnavailable,
    build_sandbox_policy,
)
from dispatcher.settings import Settings
from dispatcher.tenant_log import TenantLog
from dispatcher.tenants import Tenant, TenantConfig
from dispatcher.worker import Worker
from sandbox_runner import landlock

PROBE_SCRIPT = "async def fetch(request, env, ctx):\n    return {}\n"


def run_doctor(state_dir: Path) -> int:
    """Print the report; 0 when seccomp is in force, 1 when it is not."""
    print(f"kernel landlock ABI: {landlock.abi_version() or 'none'}")
    print(f"running as root:     {'yes' if os.geteuid() == 0 else 'no'}")
    try:
        sandbox = build_sandbox_policy(state_dir)
    except SandboxUnavailable as exc:
        print(f"seccomp:             unavailable - {exc}")
        return 1
    print(f"seccomp filter:      {len(sandbox.seccomp_program) // 8} instructions")

    try:
        layers = asyncio.run(probe_worker_layers(state_dir, sandbox))
    except DispatchError as exc:
        print(f"trial worker:        failed - {exc.message}")
        return 1
    print("a worker here is confined by:")
    for layer in layers:
        print(f"  - {layer}")
    return 0 if "seccomp" in layers else 1


async def probe_worker_layers(state_dir: Path, sandbox: SandboxPolicy) -> list[str]:
    """Boot one worker for a throwaway tenant and return its layers."""
    with tempfile.TemporaryDirectory(prefix="switchyard-doctor-") as folder:
        tenant_dir = Path(folder) / "doctor"
        tenant_dir.mkdir()
        (tenant_dir / "worker.py").write_text(PROBE_SCRIPT)
        os.chmod(folder, 0o755)

        tenant = Tenant("doctor", tenant_dir, TenantConfig())
        settings = Settings(state_dir=state_dir)
        launcher = ExecLauncher()
        worker = await Worker.spawn(tenant, settings, TenantLog(), sandbox, launcher)
        await worker.shutdown()
        return worker.layers
