"""Seal secret values for storage, each bound to where it belongs; keep the key.

A sealed value is a Fernet token (AES-CBC with an HMAC-SHA256 tag, from the
``cryptography`` package): it cannot be read or changed without the key.
Fernet has no associated data, so the label a value belongs to (for the
registry: namespace, script and secret name) is sealed with the value and
compared when it is opened. A token copied from one secret's row into
another's therefore fails to open instead of passing as that secret.

The key comes from ``SWITCHYARD_SECRET_KEY`` or ``<state>/secret.key``, and
is generated into that file on first start (see ``load_key``).

Nothing here logs a value or the key, and no message or repr holds either.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import msgspec
from cryptography.fernet import Fernet, InvalidToken

log = logging.getLogger("dispatcher.secret_box")

KEY_ENV = "SWITCHYARD_SECRET_KEY"
KEY_FILE = "secret.key"

Label = tuple[str, ...]

# Sealed plaintext: the label's parts, then the value, as one msgpack array.
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[str])


class SecretBoxError(Exception):
    """A key that is not a key, or a sealed value that does not open."""


def new_key() -> bytes:
    """A fresh random key: 32 bytes in urlsafe base64, as Fernet wants."""
    return Fernet.generate_key()


def is_key(key: bytes) -> bool:
    """True when ``key`` has the form of a key (it may still be the wrong one)."""
    try:
        Fernet(key)
    except (ValueError, TypeError):
        return False
    return True


class SecretBox:
    """Seals and opens values with one key."""

    def __init__(self, key: bytes) -> None:
        if not is_key(key):
            raise SecretBoxError(
                "secret key must be 32 bytes in urlsafe base64 (a fernet key)"
            )
        self._fernet = Fernet(key)

    def __repr__(self) -> str:
        # The default repr is harmless today; this keeps it so if a field
        # holding key material is ever added.
        return "SecretBox()"

    def seal(self, label: Label, value: str) -> bytes:
        """The token to store for ``value`` under ``label``."""
        return self._fernet.encrypt(_encoder.encode([*label, value]))

    def is_own(self, token: bytes) -> bool:
        """True when ``token`` was sealed with this box's key."""
        try:
            self._fernet.decrypt(token)
        except InvalidToken:
            return False
        return True

    def open(self, label: Label, token: bytes) -> str:
        """The value sealed under ``label``; SecretBoxError if it is not that."""
        try:
            plaintext = self._fernet.decrypt(token)
        except InvalidToken:
            raise SecretBoxError(
                "it does not decrypt with this key (wrong key or damaged data)"
            ) from None

        # A token only this key could have made: a mismatch here means it
        # was moved from another row, not forged.
        try:
            parts = _decoder.decode(plaintext)
        except msgspec.DecodeError:
            raise SecretBoxError("it decrypts to an unknown layout") from None
        if len(parts) != len(label) + 1 or tuple(parts[:-1]) != label:
            raise SecretBoxError("it was sealed for another secret")
        return parts[-1]


def load_key(state_dir: Path) -> bytes:
    """The key from ``SWITCHYARD_SECRET_KEY``, else ``state_dir/secret.key``.

    When neither exists, a new key is written to that file, readable by this
    user only, with a warning: losing the file loses every stored secret.
    SecretBoxError when the key found is not a key or the file cannot be
    read or written.
    """
    from_env = os.environ.get(KEY_ENV)
    if from_env is not None:
        return _checked_key(from_env.strip().encode(), KEY_ENV)

    path = state_dir / KEY_FILE
    try:
        key = path.read_bytes().strip()
    except FileNotFoundError:
        return _create_key_file(path)
    except OSError as exc:
        raise SecretBoxError(f"cannot read secret key file {path}: {exc}") from None
    if path.stat().st_mode & 0o077:
        log.warning("secret key file %s is readable by other users; chmod 600 it", path)
    return _checked_key(key, str(path))


def _checked_key(key: bytes, source: str) -> bytes:
    if not is_key(key):
        # The source, never the content: a near-miss key is still a key.
        raise SecretBoxError(
            f"secret key from {source} is not a fernet key (32 bytes, urlsafe base64)"
        )
    return key


def _create_key_file(path: Path) -> bytes:
    key = new_key()
    try:
        _publish_key(path, key)
    except FileExistsError:
        # Another process starting at the same moment won: use its key.
        return _checked_key(path.read_bytes().strip(), str(path))
    except OSError as exc:
        raise SecretBoxError(f"cannot create secret key file {path}: {exc}") from None

    log.warning(
        "generated a new secret key in %s; back it up with the state folder: "
        "without it no stored secret can be decrypted",
        path,
    )
    return key


def _publish_key(path: Path, key: bytes) -> None:
    """Write ``key`` to ``path``; FileExistsError if the path exists already.

    The key is written whole to a private temporary file (mkstemp makes it
    0600) and then linked to its name, which fails if the name exists: so
    no process ever reads a half-written key, and of two processes starting
    at once, both end up with the one key that was linked first.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".secret.key.")
    try:
        os.write(fd, key + b"\n")
        os.fsync(fd)
        os.link(temporary, path)
    finally:
        os.close(fd)
        os.unlink(temporary)
