"""The script registry: versions, rollback, settings and secrets at rest."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from dispatcher.registry import (
    InvalidInput,
    Registry,
    RegistryError,
    ScriptNotFound,
    ScriptSettings,
    ScriptVersion,
    SecretUnreadable,
    VersionNotFound,
    load_secret_key,
)
from dispatcher.registry_sqlite import SqliteRegistry

KEY = Fernet.generate_key()
# Distinctive, so that finding it in the database files cannot be chance.
PLAINTEXT = "xoxb-plaintext-canary-7f3a9c1e5d"
WORKER = {"worker.py": b"async def fetch(request, env, ctx):\n    return 'v1'\n"}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "registry.sqlite3"


@pytest.fixture
def registry(db_path: Path) -> Iterator[SqliteRegistry]:
    opened = SqliteRegistry(db_path, KEY)
    yield opened
    opened.close()


def deploy(
    registry: Registry,
    script: str = "acme",
    code: bytes = b"v1",
    tags: list[str] | None = None,
    namespace: str = "prod",
) -> ScriptVersion:
    """Upload a two-file script, as the management API would."""
    settings = ScriptSettings(vars={"REGION": "eu"}, tags=tags or [])
    files = {"worker.py": code, "mapping.json": b"{}"}
    return registry.put_version(namespace, script, "worker.py", files, settings)


def raw_sql(db_path: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    """Run one statement on the file directly, as an attacker or operator could."""
    with closing(sqlite3.connect(db_path)) as db, db:
        return db.execute(sql, params).fetchall()


def raw_bytes(db_path: Path) -> bytes:
    """The database file and its WAL and shared-memory files, as stored."""
    parts = [db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")]
    return b"".join(p.read_bytes() for p in parts if p.exists())


def test_put_version_is_active_and_returned_as_stored(registry: Registry) -> None:
    """An upload serves at once, with its files and settings intact."""
    version = deploy(registry)

    active = registry.active_version("prod", "acme")

    assert active == version
    assert active.active and active.number == 1
    assert active.files == {"mapping.json": b"{}", "worker.py": b"v1"}
    assert active.settings.vars == {"REGION": "eu"}
    assert len(active.version_id) == 16 and len(active.sha256) == 64


def test_unknown_script_has_no_active_version(registry: Registry) -> None:
    """Asking for a script that was never uploaded gives None, not an error."""
    assert registry.active_version("prod", "nobody") is None


def test_versions_are_numbered_per_script_newest_first(registry: Registry) -> None:
    """Each upload of a script gets the next number; other scripts start at 1."""
    for code in (b"v1", b"v2", b"v3"):
        deploy(registry, code=code)
    deploy(registry, script="other")

    versions = registry.versions("prod", "acme")

    assert [v.number for v in versions] == [3, 2, 1]
    assert [v.active for v in versions] == [True, False, False]
    assert registry.versions("prod", "other")[0].number == 1


def test_versions_of_unknown_script_is_script_not_found(registry: Registry) -> None:
    """Listing versions of a script that does not exist is a 404, not []."""
    with pytest.raises(ScriptNotFound, match="no script 'ghost'"):
        registry.versions("prod", "ghost")


def test_list_scripts_filters_by_tag(registry: Registry) -> None:
    """Listing a namespace shows active versions, narrowed by a tag if given."""
    deploy(registry, script="b-corp", tags=["beta"])
    deploy(registry, script="a-corp", tags=["beta", "eu"])
    deploy(registry, script="c-corp")
    deploy(registry, script="elsewhere", namespace="staging", tags=["beta"])

    every = registry.list_scripts("prod")
    beta = registry.list_scripts("prod", tag="beta")

    assert [v.script for v in every] == ["a-corp", "b-corp", "c-corp"]
    assert [v.script for v in beta] == ["a-corp", "b-corp"]
    assert registry.list_scripts("prod", tag="missing") == []


def test_list_all_active_covers_every_namespace(registry: Registry) -> None:
    """Start-up sees one active version per script across all namespaces."""
    deploy(registry, code=b"old")
    deploy(registry, code=b"new")
    deploy(registry, namespace="staging")

    active = registry.list_all_active()

    assert [(v.namespace, v.script) for v in active] == [
        ("prod", "acme"),
        ("staging", "acme"),
    ]
    assert active[0].files["worker.py"] == b"new"


def test_activate_rolls_back_to_an_older_version(registry: Registry) -> None:
    """Rollback serves the old code again and keeps the newer version listed."""
    first = deploy(registry, code=b"v1")
    deploy(registry, code=b"v2")

    rolled = registry.activate("prod", "acme", first.version_id)

    assert rolled.active and rolled.files["worker.py"] == b"v1"
    assert registry.active_version("prod", "acme") == rolled
    assert [v.active for v in registry.versions("prod", "acme")] == [False, True]


def test_activate_refuses_unknown_or_foreign_version(registry: Registry) -> None:
    """A version id that is not this script's cannot be activated."""
    deploy(registry)
    foreign = deploy(registry, script="other")

    with pytest.raises(VersionNotFound, match="has no version 'ffff"):
        registry.activate("prod", "acme", "ffffffffffffffff")
    with pytest.raises(VersionNotFound):
        registry.activate("prod", "acme", foreign.version_id)
    with pytest.raises(ScriptNotFound):
        registry.activate("prod", "ghost", foreign.version_id)
    assert registry.active_version("prod", "other") == foreign


def test_update_settings_keeps_code_in_a_new_version(registry: Registry) -> None:
    """Changing vars makes a new active version with the very same code."""
    before = deploy(registry)
    settings = ScriptSettings(vars={"REGION": "us"}, limits={"timeout_ms": 500})

    after = registry.update_settings("prod", "acme", settings)

    assert after.number == 2 and after.active
    assert after.files == before.files and after.sha256 == before.sha256
    assert registry.active_version("prod", "acme") == after
    assert after.settings == settings
    with pytest.raises(ScriptNotFound):
        registry.update_settings("prod", "ghost", settings)


def test_same_code_has_same_digest_and_a_change_does_not(registry: Registry) -> None:
    """The digest names the code, whatever order the files came in."""
    one = deploy(registry, code=b"same")
    two = registry.put_version(
        "prod",
        "acme",
        "worker.py",
        {"mapping.json": b"{}", "worker.py": b"same"},
        ScriptSettings(),
    )
    changed = deploy(registry, code=b"sam")

    assert one.sha256 == two.sha256
    assert changed.sha256 != one.sha256


def test_delete_script_removes_versions_and_secrets(registry: Registry) -> None:
    """A deleted script is gone with its secrets, even if re-created later."""
    deploy(registry)
    registry.put_secret("prod", "acme", "TOKEN", PLAINTEXT)

    assert registry.delete_script("prod", "acme") is True
    assert registry.delete_script("prod", "acme") is False
    assert registry.active_version("prod", "acme") is None
    with pytest.raises(ScriptNotFound):
        registry.versions("prod", "acme")

    again = deploy(registry)
    assert again.number == 1
    assert registry.secret_names("prod", "acme") == []


def test_deleted_secrets_leave_no_rows(registry: SqliteRegistry, db_path: Path) -> None:
    """Deleting a script deletes its rows, not just hides them."""
    deploy(registry)
    registry.put_secret("prod", "acme", "TOKEN", PLAINTEXT)
    registry.delete_script("prod", "acme")

    counts = [
        raw_sql(db_path, f"SELECT COUNT(*) FROM {table}")[0][0]
        for table in ("scripts", "versions", "secrets")
    ]
    assert counts == [0, 0, 0]


def test_secrets_round_trip_by_name(registry: Registry) -> None:
    """Set, overwrite, list and delete secrets; values come back exactly."""
    deploy(registry)
    registry.put_secret("prod", "acme", "TOKEN", "first")
    registry.put_secret("prod", "acme", "TOKEN", PLAINTEXT)
    registry.put_secret("prod", "acme", "API_KEY", "ünïcode ✓")

    assert registry.secret_names("prod", "acme") == ["API_KEY", "TOKEN"]
    assert registry.secret_values("prod", "acme") == {
        "API_KEY": "ünïcode ✓",
        "TOKEN": PLAINTEXT,
    }
    assert registry.delete_secret("prod", "acme", "TOKEN") is True
    assert registry.delete_secret("prod", "acme", "TOKEN") is False
    assert registry.secret_names("prod", "acme") == ["API_KEY"]


def test_secrets_need_an_existing_script(registry: Registry) -> None:
    """A secret for a script that does not exist is refused, not kept."""
    with pytest.raises(ScriptNotFound):
        registry.put_secret("prod", "ghost", "TOKEN", PLAINTEXT)
    with pytest.raises(ScriptNotFound):
        registry.secret_values("prod", "ghost")
    with pytest.raises(ScriptNotFound):
        registry.delete_secret("prod", "ghost", "TOKEN")


def test_secret_names_must_be_identifiers(registry: Registry) -> None:
    """A secret must be reachable as env.NAME, so its name is checked."""
    deploy(registry)

    with pytest.raises(InvalidInput, match="binding name 'not-valid'"):
        registry.put_secret("prod", "acme", "not-valid", PLAINTEXT)


def test_database_files_never_hold_the_plaintext(
    registry: SqliteRegistry, db_path: Path
) -> None:
    """Someone with a copy of the state folder but not the key reads no secret."""
    deploy(registry)
    registry.put_secret("prod", "acme", "TOKEN", PLAINTEXT)
    assert Path(f"{db_path}-wal").exists()

    written = raw_bytes(db_path)
    registry.close()
    checkpointed = raw_bytes(db_path)

    assert b"worker.py" in written  # the files read are the right ones
    assert PLAINTEXT.encode() not in written
    assert PLAINTEXT.encode() not in checkpointed


def test_ciphertext_moved_to_another_row_does_not_open(
    registry: SqliteRegistry, db_path: Path
) -> None:
    """Copying one secret's stored bytes over another's cannot swap values."""
    deploy(registry)
    deploy(registry, script="victim")
    registry.put_secret("prod", "acme", "TOKEN", PLAINTEXT)
    registry.put_secret("prod", "victim", "TOKEN", "victim-value")

    raw_sql(
        db_path,
        "UPDATE secrets SET ciphertext = (SELECT ciphertext FROM secrets"
        " WHERE script = 'acme') WHERE script = 'victim'",
    )

    with pytest.raises(SecretUnreadable, match="sealed for another secret") as caught:
        registry.secret_values("prod", "victim")
    assert PLAINTEXT not in str(caught.value)


def test_registry_refuses_to_open_with_the_wrong_key(db_path: Path) -> None:
    """A wrong key stops start-up with a clear error, and shows no value."""
    with closing(SqliteRegistry(db_path, KEY)) as registry:
        deploy(registry)
        registry.put_secret("prod", "acme", "TOKEN", PLAINTEXT)
    wrong = Fernet.generate_key()

    with pytest.raises(RegistryError, match="key does not open the secrets") as caught:
        SqliteRegistry(db_path, wrong)

    message = str(caught.value)
    assert PLAINTEXT not in message
    assert KEY.decode() not in message and wrong.decode() not in message


def test_secret_sealed_with_another_key_is_unreadable(
    registry: SqliteRegistry, db_path: Path
) -> None:
    """One row under a foreign key fails alone, naming it but not its value."""
    deploy(registry)
    registry.put_secret("prod", "acme", "GOOD", "fine")
    registry.put_secret("prod", "acme", "BAD", "placeholder")
    foreign = Fernet(Fernet.generate_key()).encrypt(PLAINTEXT.encode())
    raw_sql(db_path, "UPDATE secrets SET ciphertext = ? WHERE name = 'BAD'", foreign)

    with pytest.raises(SecretUnreadable, match="secret BAD of script prod/acme"):
        registry.secret_values("prod", "acme")


def test_malformed_key_is_refused(db_path: Path) -> None:
    """A key of the wrong form is a RegistryError before any file is touched."""
    with pytest.raises(RegistryError, match="must be 32 bytes in urlsafe base64"):
        SqliteRegistry(db_path, b"too-short")
    assert not db_path.exists()


def test_registry_survives_close_and_reopen(db_path: Path) -> None:
    """Everything deployed is still there after a restart."""
    with closing(SqliteRegistry(db_path, KEY)) as registry:
        first = deploy(registry, code=b"v1")
        second = deploy(registry, code=b"v2")
        registry.activate("prod", "acme", first.version_id)
        registry.put_secret("prod", "acme", "TOKEN", PLAINTEXT)

    with closing(SqliteRegistry(db_path, KEY)) as reopened:
        assert reopened.active_version("prod", "acme") == first
        assert [v.version_id for v in reopened.versions("prod", "acme")] == [
            second.version_id,
            first.version_id,
        ]
        assert reopened.secret_values("prod", "acme") == {"TOKEN": PLAINTEXT}


def test_closed_registry_refuses_calls(registry: SqliteRegistry) -> None:
    """Using the registry after close is a clear error, not a crash."""
    registry.close()
    registry.close()

    with pytest.raises(RegistryError, match="closed"):
        registry.list_all_active()


def test_database_is_wal_private_and_versioned(
    registry: SqliteRegistry, db_path: Path
) -> None:
    """The state file is in WAL mode, readable by its owner only, versioned."""
    deploy(registry)

    assert raw_sql(db_path, "PRAGMA journal_mode") == [("wal",)]
    assert raw_sql(db_path, "PRAGMA user_version") == [(1,)]
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(f"{db_path}-wal").stat().st_mode) == 0o600


def test_newer_schema_is_refused(db_path: Path) -> None:
    """An older switchyard will not write to a database a newer one migrated."""
    SqliteRegistry(db_path, KEY).close()
    raw_sql(db_path, "PRAGMA user_version = 99")

    with pytest.raises(RegistryError, match="schema version 99"):
        SqliteRegistry(db_path, KEY)


def test_file_that_is_not_a_database_is_a_clear_error(db_path: Path) -> None:
    """A damaged state file is reported by path, not as a sqlite traceback."""
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is not sqlite " * 100)

    with pytest.raises(RegistryError, match="cannot open registry database"):
        SqliteRegistry(db_path, KEY)


@pytest.mark.parametrize(
    "name",
    [
        "../escape.py",
        "sub/module.py",
        "/etc/passwd.py",
        ".hidden.py",
        "notes.txt",
        "worker.py\n",
        "a..b.py",
        "",
        "x" * 120 + ".py",
    ],
)
def test_invalid_file_names_are_refused(registry: Registry, name: str) -> None:
    """Only flat .py and .json names are stored; nothing can leave the folder."""
    files = {"worker.py": b"", name: b""}

    with pytest.raises(InvalidInput, match="must be a flat name"):
        registry.put_version("prod", "acme", "worker.py", files, ScriptSettings())
    assert registry.active_version("prod", "acme") is None


def test_adapter_main_module_is_stored_with_its_egress(registry: Registry) -> None:
    """A declarative adapter (.json main module) is a version like code."""
    files = {"adapter.json": b"{}"}
    settings = ScriptSettings(egress={"allow": ["api.notion.com"]})

    registry.put_version("prod", "acme", "adapter.json", files, settings)

    version = registry.active_version("prod", "acme")
    assert version is not None
    assert version.main_module == "adapter.json"
    assert version.settings.egress == {"allow": ["api.notion.com"]}


@pytest.mark.parametrize(
    ("main_module", "files", "message"),
    [
        ("missing.py", WORKER, "main module 'missing.py'"),
        ("adapter.json", WORKER, "main module 'adapter.json'"),
        ("worker.py", {"worker.py": "text"}, "must be bytes, not str"),
    ],
)
def test_invalid_code_is_refused(
    registry: Registry, main_module: str, files: dict[str, bytes], message: str
) -> None:
    """The main module must be one of the uploaded files, and files bytes."""
    with pytest.raises(InvalidInput, match=message):
        registry.put_version("prod", "acme", main_module, files, ScriptSettings())


@pytest.mark.parametrize(
    ("namespace", "script"), [("prod", "Acme"), ("prod", ""), ("a b", "acme")]
)
def test_invalid_script_names_are_refused(
    registry: Registry, namespace: str, script: str
) -> None:
    """Names that cannot be tenant ids are refused when stored."""
    with pytest.raises(InvalidInput, match=r"name .* must be 1-63 lowercase"):
        registry.put_version(namespace, script, "worker.py", WORKER, ScriptSettings())


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            ScriptSettings(vars={"REGION": ["eu"]}),  # type: ignore[dict-item]
            r"got `array` - at `\$.vars",
        ),
        (ScriptSettings(limits={"timeout_ms": True}), r"got `bool` - at `\$.limits"),
        (ScriptSettings(vars={"9LIVES": 1}), "binding name '9LIVES'"),
        (ScriptSettings(secret_names=["A-B"]), "binding name 'A-B'"),
    ],
)
def test_settings_that_cannot_be_stored_are_refused(
    registry: Registry, settings: ScriptSettings, message: str
) -> None:
    """Settings are checked on the way in, so every stored row reads back."""
    with pytest.raises(InvalidInput, match=message):
        registry.put_version("prod", "acme", "worker.py", WORKER, settings)


def test_concurrent_uploads_get_distinct_numbers(registry: Registry) -> None:
    """Uploads from many threads at once never share or skip a number."""

    def upload(index: int) -> None:
        for round_ in range(5):
            deploy(registry, code=f"{index}-{round_}".encode())

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    numbers = [v.number for v in registry.versions("prod", "acme")]
    assert numbers == list(range(40, 0, -1))


def test_two_registries_on_one_file_see_each_other(db_path: Path) -> None:
    """A second process (the CLI, another worker) reads what the first wrote."""
    with (
        closing(SqliteRegistry(db_path, KEY)) as writer,
        closing(SqliteRegistry(db_path, KEY)) as reader,
    ):
        deploy(writer)
        deploy(reader, code=b"v2")

        assert [v.number for v in writer.versions("prod", "acme")] == [2, 1]


def test_repr_of_a_version_leaves_out_file_contents(registry: Registry) -> None:
    """Logging a version prints its identity, not the tenant's whole code."""
    version = deploy(registry, code=b"print('do not show me')")

    assert "do not show me" not in repr(version)
    assert version.version_id in repr(version)


def test_load_secret_key_prefers_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SWITCHYARD_SECRET_KEY wins over the file, and no file is created."""
    monkeypatch.setenv("SWITCHYARD_SECRET_KEY", f"  {KEY.decode()}\n")

    assert load_secret_key(tmp_path) == KEY
    assert not (tmp_path / "secret.key").exists()


def test_load_secret_key_reads_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the environment variable the key file is used."""
    monkeypatch.delenv("SWITCHYARD_SECRET_KEY", raising=False)
    (tmp_path / "secret.key").write_bytes(KEY + b"\n")
    (tmp_path / "secret.key").chmod(0o600)

    assert load_secret_key(tmp_path) == KEY


def test_load_secret_key_generates_a_private_file_and_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """First start makes a 0600 key file, says where, and asks for a backup."""
    monkeypatch.delenv("SWITCHYARD_SECRET_KEY", raising=False)
    state = tmp_path / "state"

    with caplog.at_level(logging.WARNING):
        key = load_secret_key(state)

    path = state / "secret.key"
    assert path.read_bytes().strip() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(state) == ["secret.key"]
    assert str(path) in caplog.text and "back it up" in caplog.text
    assert key.decode() not in caplog.text
    assert load_secret_key(state) == key


@pytest.mark.parametrize("value", ["", "not-a-key", KEY.decode()[:-4]])
def test_malformed_key_in_environment_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """A bad key in the environment stops start-up without echoing it."""
    monkeypatch.setenv("SWITCHYARD_SECRET_KEY", value)

    with pytest.raises(RegistryError, match="SWITCHYARD_SECRET_KEY is not a") as caught:
        load_secret_key(tmp_path)
    assert value == "" or value not in str(caught.value)


def test_unreadable_key_file_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key path that cannot be read is named in the error, not generated over."""
    monkeypatch.delenv("SWITCHYARD_SECRET_KEY", raising=False)
    (tmp_path / "secret.key").mkdir()

    with pytest.raises(RegistryError, match="cannot read secret key file"):
        load_secret_key(tmp_path)


def test_key_file_readable_by_others_is_warned_about(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A key file other users can read still works, with a warning to fix it."""
    monkeypatch.delenv("SWITCHYARD_SECRET_KEY", raising=False)
    (tmp_path / "secret.key").write_bytes(KEY)
    (tmp_path / "secret.key").chmod(0o644)

    with caplog.at_level(logging.WARNING):
        assert load_secret_key(tmp_path) == KEY
    assert "readable by other users" in caplog.text
