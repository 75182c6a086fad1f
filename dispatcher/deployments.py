"""Scripts deployed through the management API, from registry to serving.

The registry (``registry.py``) is the record: every version's files and
settings, and the secrets, encrypted. To serve a version, its files are
written once to ``<state>/deployed/<script>/<sha256>/``, a folder named by
its content so that a version is never half-written where a worker reads
it, and the tenant is installed through the same safe swap a folder reload
uses (``directory.py``): compiled, booted in a trial worker, then served
while the previous version drains.

A tenant id is the script's name in the dispatch namespace (``default``
unless configured). When the tenants folder and the registry both hold a
tenant, the registry's wins: the folder is for development, the API is how
a platform deploys.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import tempfile
from pathlib import Path

import msgspec

from dispatcher.directory import DeployRefused, TenantDirectory
from dispatcher.registry import (
    Registry,
    RegistryError,
    ScriptSettings,
    ScriptVersion,
)
from dispatcher.tenants import (
    Egress,
    Limits,
    Tenant,
    TenantConfig,
    load_tenant,
    with_adapter_policy,
)
from sandbox_runner import adapters

log = logging.getLogger("dispatcher.deployments")

MAX_SCRIPT_BYTES = 1024 * 1024
FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}\.(py|json)$")


class Deployments:
    """Deploys, updates, rolls back and removes API-managed tenants."""

    def __init__(
        self,
        registry: Registry,
        directory: TenantDirectory,
        state_dir: Path,
        namespace: str = "default",
        tenants_dir: Path | None = None,
    ) -> None:
        self.registry = registry
        self.directory = directory
        self.state_dir = state_dir
        self.root = state_dir.resolve() / "deployed"
        self.namespace = namespace
        # The watched folder: a deleted script that has a folder there
        # falls back to it, as if the API version had never been.
        self.tenants_dir = tenants_dir

    async def deploy(
        self,
        script: str,
        main_module: str,
        files: dict[str, bytes],
        settings: ScriptSettings,
    ) -> tuple[ScriptVersion, float]:
        """Trial-load and serve new code; record it only once it serves."""
        check_files(main_module, files)
        check_limits_and_egress(settings)
        staged = StagedVersion(script, main_module, files, settings)

        folder = staged.folder(self.root)
        startup_ms = await self.serve(script, folder, main_module, settings)
        version = self.registry.put_version(
            self.namespace, script, main_module, files, settings
        )
        self.label(script, version.version_id)
        return version, startup_ms

    def label(self, script: str, version_id: str) -> None:
        """Show the serving tenant under its registry version id.

        A version serves before the registry records it (a refused trial
        records nothing), so its id is known only afterwards.
        """
        tenant = self.directory.get(script)
        if tenant is not None:
            tenant.version = version_id

    async def serve(
        self, script: str, folder: Path, main_module: str, settings: ScriptSettings
    ) -> float:
        """Install the version in ``folder`` as tenant ``script``.

        A version whose secrets have no value yet still gets its trial
        load, so that code errors show at once; it then answers 503
        naming the missing secrets until they are set.
        """
        secrets = self.registry_secrets(script)
        tenant = tenant_for(script, folder, main_module, settings, secrets)
        startup_ms = await self.directory.install(tenant)
        missing = missing_secrets(tenant)
        if missing:
            tenant.problem = f"secrets without a value: {', '.join(missing)}"
        return startup_ms

    def registry_secrets(self, script: str) -> dict[str, str]:
        if self.registry.active_version(self.namespace, script) is None:
            return {}
        return self.registry.secret_values(self.namespace, script)

    async def serve_version(self, version: ScriptVersion) -> float:
        """Serve a version already in the registry (rollback, settings)."""
        staged = StagedVersion(
            version.script, version.main_module, version.files, version.settings
        )
        folder = staged.folder(self.root)
        startup_ms = await self.serve(
            version.script, folder, version.main_module, version.settings
        )
        self.label(version.script, version.version_id)
        return startup_ms

    async def serve_changed_settings(
        self, current: ScriptVersion, settings: ScriptSettings
    ) -> float:
        """Serve the current code with new settings (trial-loaded first)."""
        check_limits_and_egress(settings)
        staged = StagedVersion(
            current.script, current.main_module, current.files, settings
        )
        folder = staged.folder(self.root)
        return await self.serve(current.script, folder, current.main_module, settings)

    async def reload_secrets(self, script: str) -> None:
        """Serve the active version again, with the secrets as they are now."""
        version = self.registry.active_version(self.namespace, script)
        if version is None:
            return
        try:
            await self.serve_version(version)
        except DeployRefused as exc:
            log.warning("tenant %s: secrets changed but not served: %s", script, exc)

    async def restore_all(self) -> None:
        """At start-up: serve every active version the registry holds."""
        for version in self.registry.list_all_active():
            if version.namespace != self.namespace:
                continue
            if self.directory.get(version.script) is not None:
                log.warning(
                    "tenant %s is both in the tenants folder and deployed "
                    "through the API; the deployed version serves",
                    version.script,
                )
            try:
                await self.serve_version(version)
            except (DeployRefused, RegistryError) as exc:
                # One tenant that cannot serve must not keep the rest down.
                log.error(
                    "tenant %s: deployed version cannot serve: %s", version.script, exc
                )

    async def remove(self, script: str) -> bool:
        """Stop serving a script and forget it, secrets included."""
        existed = self.registry.delete_script(self.namespace, script)
        if existed:
            if not await self.fall_back_to_folder(script):
                self.directory.remove(script)
            shutil.rmtree(self.root / script, ignore_errors=True)
        return existed

    async def fall_back_to_folder(self, script: str) -> bool:
        """Serve the script's folder version in place of the deleted one.

        Installed like any new version - trial-loaded, then swapped in - so
        the name never stops answering, and its counts and tails go on.
        False when there is no folder version, or it does not load.
        """
        if self.tenants_dir is None:
            return False
        folder = self.tenants_dir / script
        if not (folder / "tenant.toml").is_file():
            return False
        tenant = load_tenant(folder, self.state_dir)
        if tenant is None:
            return False
        try:
            await self.directory.install(tenant)
        except DeployRefused as exc:
            log.warning("tenant %s: its folder version does not load: %s", script, exc)
            return False
        log.info("tenant %s: API version deleted; the folder version serves", script)
        return True


class StagedVersion:
    """A version's files, written to a content-addressed folder on demand."""

    def __init__(
        self,
        script: str,
        main_module: str,
        files: dict[str, bytes],
        settings: ScriptSettings,
    ) -> None:
        self.script = script
        self.main_module = main_module
        self.files = files
        self.settings = settings

    def folder(self, root: Path) -> Path:
        """The version's folder, written atomically the first time."""
        digest = content_digest(self.main_module, self.files)
        target = root / self.script / digest
        if target.is_dir():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
        for name, content in self.files.items():
            (staging / name).write_bytes(content)
        staging.chmod(0o755)
        try:
            staging.rename(target)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # written meanwhile
        return target


def content_digest(main_module: str, files: dict[str, bytes]) -> str:
    """A short hash of the files: the name of the folder that holds them."""
    digest = hashlib.sha256(main_module.encode())
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name] + b"\0")
    return digest.hexdigest()[:16]


def check_files(main_module: str, files: dict[str, bytes]) -> None:
    """Flat, safe file names, the main module among them, a bounded size."""
    for name in files:
        if not FILE_NAME.fullmatch(name):
            raise DeployRefused(f"file name {name[:60]!r} is not allowed")
    if main_module not in files:
        raise DeployRefused(f"main module {main_module!r} is not among the files")
    total = sum(len(content) for content in files.values())
    if total > MAX_SCRIPT_BYTES:
        raise DeployRefused(
            f"script files of {total} bytes are over the limit of {MAX_SCRIPT_BYTES}"
        )


def check_limits_and_egress(settings: ScriptSettings) -> None:
    """Refuse limits or an egress policy out of their ranges, naming where."""
    try:
        msgspec.convert(settings.limits, Limits)
    except msgspec.ValidationError as exc:
        raise DeployRefused(f"limits: {exc}") from None
    try:
        msgspec.convert(settings.egress, Egress)
    except msgspec.ValidationError as exc:
        raise DeployRefused(f"egress: {exc}") from None


def tenant_for(
    script: str,
    folder: Path,
    main_module: str,
    settings: ScriptSettings,
    secrets: dict[str, str],
) -> Tenant:
    """The Tenant a deployed version serves as, with its secret values."""
    config = TenantConfig(
        script=main_module,
        secrets=list(settings.secret_names),
        vars=dict(settings.vars),
        limits=msgspec.convert(settings.limits, Limits),
        egress=msgspec.convert(settings.egress, Egress),
    )
    if main_module.endswith(".json"):
        try:
            adapter = adapters.load_config(folder / main_module)
        except ValueError as exc:
            raise DeployRefused(str(exc)) from None
        config = with_adapter_policy(config, adapter)
    tenant = Tenant(script, folder, config, version=folder.name)
    known = {name: secrets[name] for name in settings.secret_names if name in secrets}
    tenant.bindings = {**settings.vars, **known}
    return tenant


def missing_secrets(tenant: Tenant) -> list[str]:
    return [name for name in tenant.config.secrets if name not in tenant.bindings]
