"""Identity never leaves raw: the VIN (and any identity signal) becomes a keyed pseudonym.

HMAC-SHA256 with a random 32-byte key made on the vehicle and stored with mode
0600.  The pseudonym is stable for as long as the key exists (so a backend can
recognise the same vehicle) but cannot be turned back into the VIN, and
without the key nobody can check a guessed VIN against it.  Deleting the key
file unlinks the vehicle from everything sent before.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

from agent.privacy.durable import ensure_private_dir, fsync_dir

KEY_FILE = "pseudonym.key"
KEY_BYTES = 32
# Identity signal values become integers of this many bits: exactly representable
# as a float64, so a batch that stores physical values as floats keeps them intact.
VALUE_BITS = 48


class KeyFileError(ValueError):
    """The key file is unusable (wrong permissions or size); the message says how to fix it."""


def normalize_vin(vin: str) -> str:
    return "".join(vin.split()).upper()


class Pseudonymizer:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise KeyFileError(f"a pseudonym key is {KEY_BYTES} bytes, got {len(key)}")
        self._key = key

    @classmethod
    def load_or_create(cls, path: str | Path) -> Pseudonymizer:
        """The per-vehicle key at ``path``, created (0600, random) on first use."""
        path = Path(path)
        ensure_private_dir(path.parent)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls(_read_private(path))
        try:
            key = os.urandom(KEY_BYTES)
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(path.parent)
        return cls(key)

    @classmethod
    def in_dir(cls, state_dir: str | Path) -> Pseudonymizer:
        return cls.load_or_create(Path(state_dir) / KEY_FILE)

    def _mac(self, label: bytes, text: str) -> bytes:
        return hmac.new(self._key, label + b"\x00" + text.encode("utf-8"), hashlib.sha256).digest()

    def vehicle_pseudonym(self, vin: str) -> str:
        """64 hex characters standing for this VIN on this vehicle's key."""
        return self._mac(b"vin", normalize_vin(vin)).hex()

    def value_pseudonym(self, signal_key: str, value: int | float) -> int:
        """A 48-bit integer standing for one identity signal value (same value -> same integer)."""
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        digest = self._mac(b"signal", f"{signal_key}={value!r}")
        return int.from_bytes(digest[: VALUE_BITS // 8], "big")

    @property
    def key_id(self) -> str:
        """A short fingerprint of the key (not of any identity), to tell keys apart in reports."""
        return hashlib.sha256(b"key-id\x00" + self._key).hexdigest()[:12]


def _read_private(path: Path) -> bytes:
    info = path.stat()
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path}: pseudonym key is accessible by other users "
                           f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}")
    if info.st_uid != os.geteuid():
        raise KeyFileError(f"{path}: pseudonym key belongs to uid {info.st_uid}, not to this user")
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise KeyFileError(f"{path}: pseudonym key must be {KEY_BYTES} bytes, found {len(key)} "
                           "(delete it to make a new key; earlier pseudonyms will no longer match)")
    return key


__all__ = ["KEY_FILE", "KeyFileError", "Pseudonymizer", "normalize_vin"]
