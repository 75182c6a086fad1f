"""The store of deployed scripts: their versions, settings and secrets.

The management API writes here and the dispatcher reads here at start-up.
Every upload is a new numbered *version*; one version per script is
*active*, and rollback makes an older one active again. Secret values are
sealed by ``SecretBox`` before they reach the database, each bound to its
namespace, script and name, and are only ever handed back to the dispatcher
by ``secret_values``.

``Registry`` is the interface; ``SqliteRegistry`` (``registry_sqlite.py``)
keeps it in one SQLite
file in WAL mode, three tables: ``scripts`` (which version is active),
``versions`` (code, settings, digest) and ``secrets`` (sealed values). A
PostgreSQL implementation for many dispatcher nodes would keep the same
tables (BYTEA for files and sealed values, JSONB for settings), take a row
lock on the script (``SELECT ... FOR UPDATE``) where SQLite relies on
``BEGIN IMMEDIATE`` to number versions without gaps or duplicates, use a
connection pool instead of one locked connection, and tell the other nodes
when a script changes (``LISTEN``/``NOTIFY``); sealing stays in
``SecretBox``, so rows can move between the two with the same key.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import msgspec

from dispatcher.secret_box import (
    SecretBoxError,
    load_key,
)
from dispatcher.tenants import BINDING_NAME, is_valid_tenant_id
from sandbox_runner.frames import BindingValue

log = logging.getLogger("dispatcher.registry")

EgressValue = list[str] | int | dict[str, float]

# Flat names only: a leading dot would hide a file, a slash would leave
# the script's folder.
FILE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}\.(?:py|json)")


class RegistryError(Exception):
    """Base of every registry error; no message ever holds a secret value."""


class ScriptNotFound(RegistryError):
    """No script by that name in that namespace."""


class VersionNotFound(RegistryError):
    """The script exists, but has no version with that id."""


class InvalidInput(RegistryError, ValueError):
    """A name, file or setting the registry refuses to store."""


class SecretUnreadable(RegistryError):
    """A stored secret that does not open: wrong key, damaged or moved row."""


@dataclass(frozen=True)
class ScriptSettings:
    """What a script is deployed with besides its code."""

    vars: dict[str, BindingValue] = field(default_factory=dict)
    # Names the script declares it needs; values are set by put_secret.
    secret_names: list[str] = field(default_factory=list)
    # Fields of dispatcher.tenants.Limits; the caller checks their ranges.
    limits: dict[str, int | float] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    # Fields of dispatcher.tenants.Egress (allow, max_subrequests,
    # rate_limits); the caller checks them. Versions stored before this
    # field existed decode with none: no outbound calls, as they had.
    egress: dict[str, EgressValue] = field(default_factory=dict)


@dataclass(frozen=True)
class ScriptVersion:
    """One stored version of a script; it never holds a secret value."""

    namespace: str
    script: str
    version_id: str
    number: int
    main_module: str
    files: dict[str, bytes] = field(repr=False)
    settings: ScriptSettings
    # Over the code only: a settings change keeps the digest.
    sha256: str
    created_at: float
    active: bool


class Registry(Protocol):
    """Where scripts, their versions and their secrets are kept.

    Every method may raise RegistryError when the store itself fails; the
    subclasses below name the failures a caller can act on.
    """

    def put_version(
        self,
        namespace: str,
        script: str,
        main_module: str,
        files: dict[str, bytes],
        settings: ScriptSettings,
    ) -> ScriptVersion:
        """Store a new version, creating the script if needed; it is active.

        InvalidInput for a bad name, file name, main module or setting type.
        """

    def active_version(self, namespace: str, script: str) -> ScriptVersion | None:
        """The version that serves, or None when there is no such script."""

    def list_scripts(
        self, namespace: str, tag: str | None = None
    ) -> list[ScriptVersion]:
        """The active version of each script in a namespace, by script name."""

    def list_all_active(self) -> list[ScriptVersion]:
        """The active version of every script, for the dispatcher's start-up."""

    def versions(self, namespace: str, script: str) -> list[ScriptVersion]:
        """Every version of a script, newest first; ScriptNotFound if none."""

    def activate(self, namespace: str, script: str, version_id: str) -> ScriptVersion:
        """Make a stored version the active one again (rollback).

        ScriptNotFound, or VersionNotFound when the id is not one of this
        script's versions.
        """

    def update_settings(
        self, namespace: str, script: str, settings: ScriptSettings
    ) -> ScriptVersion:
        """A new active version: the active one's code with these settings.

        ScriptNotFound, or InvalidInput as for put_version.
        """

    def delete_script(self, namespace: str, script: str) -> bool:
        """Remove a script with its versions and secrets; False if absent."""

    def put_secret(self, namespace: str, script: str, name: str, value: str) -> None:
        """Set a secret's value; ScriptNotFound, InvalidInput for a bad name."""

    def delete_secret(self, namespace: str, script: str, name: str) -> bool:
        """Remove a secret; False if it had no value; ScriptNotFound."""

    def secret_names(self, namespace: str, script: str) -> list[str]:
        """The names of the secrets that have a value, sorted; ScriptNotFound."""

    def secret_values(self, namespace: str, script: str) -> dict[str, str]:
        """Every secret's value, decrypted; for the dispatcher, never the API.

        ScriptNotFound, or SecretUnreadable when a value does not open with
        this key or was sealed for another secret.
        """

    def close(self) -> None:
        """Release the store; later calls raise RegistryError."""


def load_secret_key(state_dir: Path) -> bytes:
    """The key that encrypts secret values at rest.

    From ``SWITCHYARD_SECRET_KEY`` when set, else from ``state_dir/secret.key``.
    When neither exists, a new key is written to that file, readable by this
    user only, with a warning: the file must be backed up, since losing it
    loses every stored secret. Raises RegistryError for a malformed key.
    """
    try:
        return load_key(state_dir)
    except SecretBoxError as exc:
        raise RegistryError(str(exc)) from None


def code_digest(main_module: str, files: Mapping[str, bytes]) -> str:
    """A hex SHA-256 naming the code: the main module, then files by name."""
    digest = hashlib.sha256()
    parts = [main_module.encode()]
    for name in sorted(files):
        parts += [name.encode(), files[name]]
    for part in parts:
        # Length-prefixed, so that moving bytes between a name and a
        # content cannot give the same digest.
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def check_script_name(namespace: str, script: str) -> None:
    """Raise InvalidInput unless both names are tenant-style ids."""
    for kind, name in (("namespace", namespace), ("script", script)):
        if not is_valid_tenant_id(name):
            raise InvalidInput(
                f"{kind} name {name!r} must be 1-63 lowercase letters, digits "
                "or dashes, starting with a letter or digit"
            )


def check_code(main_module: str, files: Mapping[str, bytes]) -> None:
    """Raise InvalidInput unless the files are flat, named and bytes."""
    for name, content in files.items():
        if not FILE_NAME.fullmatch(name) or ".." in name:
            raise InvalidInput(
                f"file name {name!r} must be a flat name ending in .py or .json"
            )
        if not isinstance(content, bytes):
            raise InvalidInput(
                f"file {name!r} must be bytes, not {type(content).__name__}"
            )
    # A .json main module is a declarative adapter; the deploy checks it.
    if main_module not in files:
        raise InvalidInput(
            f"main module {main_module!r} must be one of the uploaded files"
        )


def check_settings(settings: ScriptSettings) -> ScriptSettings:
    """The settings as they will be stored; InvalidInput if they cannot be."""
    try:
        stored = settings_decoder.decode(settings_encoder.encode(settings))
    except (TypeError, msgspec.ValidationError) as exc:
        # msgspec names the expected type and where, never the value.
        raise InvalidInput(f"settings do not have the expected types: {exc}") from None
    for name in [*stored.vars, *stored.secret_names]:
        check_binding_name(name)
    return stored


def check_binding_name(name: str) -> None:
    """Raise InvalidInput unless ``name`` can be ``env.NAME`` in a script."""
    if not BINDING_NAME.fullmatch(name):
        raise InvalidInput(f"binding name {name!r} is not a valid identifier")


settings_encoder = msgspec.json.Encoder()
settings_decoder = msgspec.json.Decoder(ScriptSettings)
files_encoder = msgspec.msgpack.Encoder()
files_decoder = msgspec.msgpack.Decoder(dict[str, bytes])
