"""WireGuard keys: the node's private key file (upstream: ``/run/flannel/wgkey``, overridden
by ``WIREGUARD_KEY_FILE``), created once with mode 0600 and reused, and the checks a peer's
public key must pass. The key is never logged. The public key is computed by the
``cryptography`` library's X25519 (the same function as ``wg pubkey``): no cryptography here.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_KEY_FILE = "/run/flannel/wgkey"
KEY_FILE_ENV = "WIREGUARD_KEY_FILE"
KEY_BYTES = 32


class InvalidKey(ValueError):
    """Not a WireGuard key."""


def parse_key(text: str) -> bytes:
    """The 32 bytes of a base64 WireGuard key (as wg(8) and upstream write them)."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKey("not base64") from None
    if len(raw) != KEY_BYTES or base64.b64encode(raw).decode() != text.strip():
        raise InvalidKey(f"not a {KEY_BYTES}-byte key")
    return raw


def key_file_path() -> Path:
    return Path(os.environ.get(KEY_FILE_ENV) or DEFAULT_KEY_FILE)


def public_key(private: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = X25519PrivateKey.from_private_bytes(private)
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def load_or_create(path: Path) -> tuple[bytes, bool]:
    """The private key in ``path`` (created if missing); True if it was created now. A file
    readable by group or others is tightened to 0600, with a warning; an unreadable or
    malformed one is an error naming the file (never its content)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _load(path), False
    except FileNotFoundError:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        return load_or_create(path)
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    private = X25519PrivateKey.generate().private_bytes(
        Encoding.Raw, PrivateFormat.Raw, NoEncryption()
    )
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, base64.b64encode(private) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return private, True


def _load(path: Path) -> bytes:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning(
            "WireGuard key file %s had mode %04o (readable by others): set to 0600", path, mode
        )
        path.chmod(0o600)
    try:
        return parse_key(path.read_text())
    except (InvalidKey, UnicodeDecodeError):
        raise InvalidKey(
            f"could not parse private key from file {path}: not a base64 32-byte WireGuard "
            "key (delete it to have a new one created; peers follow the new public key)"
        ) from None
