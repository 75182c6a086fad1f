"""The SQLite implementation of the registry (see ``registry.py``).

One file in WAL mode, so readers never wait on the one writer; numbered
versions are assigned inside ``BEGIN IMMEDIATE`` so two uploads can never
take the same number.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from secrets import token_hex
from typing import Any

from dispatcher.registry import (
    InvalidInput,
    RegistryError,
    ScriptNotFound,
    ScriptSettings,
    ScriptVersion,
    SecretUnreadable,
    VersionNotFound,
    check_binding_name,
    check_code,
    check_script_name,
    check_settings,
    code_digest,
    files_decoder,
    files_encoder,
    settings_decoder,
    settings_encoder,
)
from dispatcher.secret_box import KEY_ENV, KEY_FILE, SecretBox, SecretBoxError

log = logging.getLogger("dispatcher.registry")

SCHEMA_VERSION = 1
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS scripts (
        namespace TEXT NOT NULL,
        script TEXT NOT NULL,
        -- Deferred: a new script's row and its first version are
        -- inserted in one transaction, and each refers to the other.
        active_version_id TEXT NOT NULL
            REFERENCES versions (version_id) DEFERRABLE INITIALLY DEFERRED,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (namespace, script)
    )""",
    """CREATE TABLE IF NOT EXISTS versions (
        version_id TEXT PRIMARY KEY,
        namespace TEXT NOT NULL,
        script TEXT NOT NULL,
        number INTEGER NOT NULL,
        main_module TEXT NOT NULL,
        files BLOB NOT NULL,
        settings TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        created_at REAL NOT NULL,
        UNIQUE (namespace, script, number),
        FOREIGN KEY (namespace, script)
            REFERENCES scripts (namespace, script) ON DELETE CASCADE
    )""",
    """CREATE TABLE IF NOT EXISTS secrets (
        namespace TEXT NOT NULL,
        script TEXT NOT NULL,
        name TEXT NOT NULL,
        ciphertext BLOB NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (namespace, script, name),
        FOREIGN KEY (namespace, script)
            REFERENCES scripts (namespace, script) ON DELETE CASCADE
    )""",
)

_SELECT_VERSION = """
    SELECT v.namespace, v.script, v.version_id, v.number, v.main_module,
        v.files, v.settings, v.sha256, v.created_at,
        v.version_id = s.active_version_id
    FROM versions AS v
    JOIN scripts AS s ON s.namespace = v.namespace AND s.script = v.script
"""
_SELECT_ACTIVE = _SELECT_VERSION + " WHERE v.version_id = s.active_version_id"
_OF_SCRIPT = " WHERE v.namespace = ? AND v.script = ?"


def _version_from_row(row: tuple[Any, ...]) -> ScriptVersion:
    return ScriptVersion(
        namespace=row[0],
        script=row[1],
        version_id=row[2],
        number=row[3],
        main_module=row[4],
        files=files_decoder.decode(row[5]),
        settings=settings_decoder.decode(row[6]),
        sha256=row[7],
        created_at=row[8],
        active=bool(row[9]),
    )


class SqliteRegistry:
    """The registry in one SQLite file, shared safely by threads.

    Its methods do what ``Registry`` documents. One connection behind a
    lock: every call is a few short statements, so the dispatcher can make
    them from its event loop. Other processes may open the same file (WAL
    lets readers run beside the one writer); a writer waits up to five
    seconds for another process's write to end.
    """

    def __init__(self, path: Path, secret_key: bytes) -> None:
        try:
            self._box = SecretBox(secret_key)
        except SecretBoxError as exc:
            raise RegistryError(str(exc)) from None
        self.path = path
        self._lock = threading.Lock()
        self._closed = False
        self._db = _connect(path)
        try:
            self._prepare()
        except BaseException:
            self._db.close()
            raise

    def put_version(
        self,
        namespace: str,
        script: str,
        main_module: str,
        files: dict[str, bytes],
        settings: ScriptSettings,
    ) -> ScriptVersion:
        check_script_name(namespace, script)
        check_code(main_module, files)
        stored = check_settings(settings)

        # A copy, so that the caller changing its dict later changes nothing.
        code = dict(sorted(files.items()))
        with self._transaction(write=True) as db:
            version = _insert_version(db, namespace, script, main_module, code, stored)
        _log_deployed(version, "deployed")
        return version

    def active_version(self, namespace: str, script: str) -> ScriptVersion | None:
        with self._transaction() as db:
            return _active_version(db, namespace, script)

    def list_scripts(
        self, namespace: str, tag: str | None = None
    ) -> list[ScriptVersion]:
        query = _SELECT_ACTIVE + " AND s.namespace = ? ORDER BY s.script"
        found = self._select(query, namespace)
        return [v for v in found if tag is None or tag in v.settings.tags]

    def list_all_active(self) -> list[ScriptVersion]:
        return self._select(_SELECT_ACTIVE + " ORDER BY s.namespace, s.script")

    def versions(self, namespace: str, script: str) -> list[ScriptVersion]:
        query = _SELECT_VERSION + _OF_SCRIPT + " ORDER BY v.number DESC"
        found = self._select(query, namespace, script)
        if not found:
            raise _script_not_found(namespace, script)
        return found

    def activate(self, namespace: str, script: str, version_id: str) -> ScriptVersion:
        query = _SELECT_VERSION + _OF_SCRIPT + " AND v.version_id = ?"
        with self._transaction(write=True) as db:
            row = db.execute(query, (namespace, script, version_id)).fetchone()
            if row is None:
                _require_script(db, namespace, script)
                raise VersionNotFound(
                    f"script {namespace}/{script} has no version {version_id!r}"
                )
            _set_active(db, namespace, script, version_id)
        version = replace(_version_from_row(row), active=True)
        _log_deployed(version, "activated")
        return version

    def update_settings(
        self, namespace: str, script: str, settings: ScriptSettings
    ) -> ScriptVersion:
        stored = check_settings(settings)
        with self._transaction(write=True) as db:
            current = _active_version(db, namespace, script)
            if current is None:
                raise _script_not_found(namespace, script)
            version = _insert_version(
                db, namespace, script, current.main_module, current.files, stored
            )
        _log_deployed(version, "settings changed in")
        return version

    def delete_script(self, namespace: str, script: str) -> bool:
        # The foreign keys cascade to the script's versions and secrets.
        with self._transaction(write=True) as db:
            deleted = db.execute(
                "DELETE FROM scripts WHERE namespace = ? AND script = ?",
                (namespace, script),
            ).rowcount
        if deleted:
            log.info("script %s/%s: deleted with its secrets", namespace, script)
        return deleted > 0

    def put_secret(self, namespace: str, script: str, name: str, value: str) -> None:
        check_binding_name(name)
        if not isinstance(value, str):
            raise InvalidInput(
                f"secret {name} must be a string, not {type(value).__name__}"
            )

        sealed = self._box.seal((namespace, script, name), value)
        with self._transaction(write=True) as db:
            _require_script(db, namespace, script)
            db.execute(
                "INSERT INTO secrets (namespace, script, name, ciphertext, updated_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (namespace, script, name)"
                " DO UPDATE SET ciphertext = excluded.ciphertext,"
                " updated_at = excluded.updated_at",
                (namespace, script, name, sealed, time.time()),
            )
        log.info("script %s/%s: secret %s set", namespace, script, name)

    def delete_secret(self, namespace: str, script: str, name: str) -> bool:
        with self._transaction(write=True) as db:
            _require_script(db, namespace, script)
            deleted = db.execute(
                "DELETE FROM secrets WHERE namespace = ? AND script = ? AND name = ?",
                (namespace, script, name),
            ).rowcount
        if deleted:
            log.info("script %s/%s: secret %s deleted", namespace, script, name)
        return deleted > 0

    def secret_names(self, namespace: str, script: str) -> list[str]:
        return sorted(self._sealed_secrets(namespace, script))

    def secret_values(self, namespace: str, script: str) -> dict[str, str]:
        sealed = self._sealed_secrets(namespace, script)
        return {
            name: self._open_secret(namespace, script, name, token)
            for name, token in sorted(sealed.items())
        }

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def _select(self, query: str, *params: str) -> list[ScriptVersion]:
        with self._transaction() as db:
            rows = db.execute(query, params).fetchall()
        return [_version_from_row(row) for row in rows]

    def _sealed_secrets(self, namespace: str, script: str) -> dict[str, bytes]:
        with self._transaction() as db:
            _require_script(db, namespace, script)
            rows = db.execute(
                "SELECT name, ciphertext FROM secrets"
                " WHERE namespace = ? AND script = ?",
                (namespace, script),
            ).fetchall()
        return {name: token for name, token in rows}

    def _open_secret(self, namespace: str, script: str, name: str, token: bytes) -> str:
        try:
            return self._box.open((namespace, script, name), token)
        except SecretBoxError as exc:
            raise SecretUnreadable(
                f"secret {name} of script {namespace}/{script} cannot be read: {exc}"
            ) from None

    def _prepare(self) -> None:
        """Create or check the schema, and check the key against stored secrets."""
        with self._transaction(write=True) as db:
            found = db.execute("PRAGMA user_version").fetchone()[0]
            if found > SCHEMA_VERSION:
                raise RegistryError(
                    f"registry database {self.path} has schema version {found}; "
                    f"this switchyard knows versions up to {SCHEMA_VERSION}"
                )
            # Migrations from an older `found` will run here, in this
            # transaction, before the tables are used.
            for statement in SCHEMA:
                db.execute(statement)
            # PRAGMA takes no parameters; the value is our own constant.
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._check_key(db)

    def _check_key(self, db: sqlite3.Connection) -> None:
        # With the wrong key (a typo in the environment, a key file from
        # another install) every secret would fail later one by one, and new
        # ones would be sealed with a key that opens none of the old: refuse
        # to start instead. One stored secret is enough to tell.
        row = db.execute("SELECT ciphertext FROM secrets LIMIT 1").fetchone()
        if row is not None and not self._box.is_own(row[0]):
            raise RegistryError(
                f"the secret key does not open the secrets stored in {self.path}; "
                f"set {KEY_ENV} or {KEY_FILE} to the key they were sealed with"
            )

    @contextmanager
    def _transaction(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """Hold the lock and a transaction; roll back if the body raises.

        A write takes SQLite's write lock at BEGIN, not at its first
        write, so that reading the next version number and inserting it
        cannot interleave with another process doing the same.
        """
        with self._lock:
            if self._closed:
                raise RegistryError("the registry is closed")
            try:
                self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield self._db
                except BaseException:
                    # SQLite may have rolled back already (a full disk does).
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise RegistryError(f"registry database {self.path}: {exc}") from exc


def _connect(path: Path) -> sqlite3.Connection:
    """Open the database file, private to this user, in WAL mode."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # SQLite gives the -wal and -shm files the mode of the database
        # file, so creating it private keeps all three private.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        db = sqlite3.connect(
            path, timeout=5.0, isolation_level=None, check_same_thread=False
        )
    except (OSError, sqlite3.Error) as exc:
        raise RegistryError(f"cannot open registry database {path}: {exc}") from exc

    # The first statement is where a file that is not a database fails.
    try:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        # NORMAL in WAL mode: a power cut may lose the last commits, never
        # corrupt the file.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
    except sqlite3.Error as exc:
        db.close()
        raise RegistryError(f"cannot open registry database {path}: {exc}") from exc
    if mode != "wal":
        log.warning("registry database %s is in %s mode, not wal", path, mode)
    return db


def _insert_version(
    db: sqlite3.Connection,
    namespace: str,
    script: str,
    main_module: str,
    files: dict[str, bytes],
    settings: ScriptSettings,
) -> ScriptVersion:
    """Add a version after the script's newest, and make it active."""
    number = db.execute(
        "SELECT COALESCE(MAX(number), 0) + 1 FROM versions"
        " WHERE namespace = ? AND script = ?",
        (namespace, script),
    ).fetchone()[0]
    version = ScriptVersion(
        namespace=namespace,
        script=script,
        version_id=token_hex(8),
        number=number,
        main_module=main_module,
        files=files,
        settings=settings,
        sha256=code_digest(main_module, files),
        created_at=time.time(),
        active=True,
    )

    _set_active(db, namespace, script, version.version_id)
    db.execute(
        "INSERT INTO versions (version_id, namespace, script, number,"
        " main_module, files, settings, sha256, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            version.version_id, namespace, script, number, main_module,
            files_encoder.encode(files), settings_encoder.encode(settings).decode(),
            version.sha256, version.created_at,
        ),
    )  # fmt: skip
    return version


def _set_active(
    db: sqlite3.Connection, namespace: str, script: str, version_id: str
) -> None:
    """Point the script at a version, creating the script's row if new."""
    now = time.time()
    db.execute(
        "INSERT INTO scripts (namespace, script, active_version_id,"
        " created_at, updated_at) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (namespace, script) DO UPDATE SET"
        " active_version_id = excluded.active_version_id,"
        " updated_at = excluded.updated_at",
        (namespace, script, version_id, now, now),
    )


def _active_version(
    db: sqlite3.Connection, namespace: str, script: str
) -> ScriptVersion | None:
    query = _SELECT_ACTIVE + " AND s.namespace = ? AND s.script = ?"
    row = db.execute(query, (namespace, script)).fetchone()
    return None if row is None else _version_from_row(row)


def _require_script(db: sqlite3.Connection, namespace: str, script: str) -> None:
    row = db.execute(
        "SELECT 1 FROM scripts WHERE namespace = ? AND script = ?",
        (namespace, script),
    ).fetchone()
    if row is None:
        raise _script_not_found(namespace, script)


def _script_not_found(namespace: str, script: str) -> ScriptNotFound:
    return ScriptNotFound(f"no script {script!r} in namespace {namespace!r}")


def _log_deployed(v: ScriptVersion, what: str) -> None:
    log.info("script %s/%s: %s version %d", v.namespace, v.script, what, v.number)
