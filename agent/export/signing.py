"""The vehicle's Ed25519 signing key (``cryptography``), used to sign owner exports.

The private key lives in the state directory as PKCS#8 PEM with mode 0600 and
is created on first use.  Creation uses O_EXCL on a temporary name and a hard
link into place, so two processes starting at once end up with one key and a
reader never sees a half-written file.

An export carries its public key, so a forger can carry theirs: the key's
fingerprint (``SHA256:<64 hex>``, ``display_fingerprint``) has to reach the owner
another way.  It is logged once at WARNING when the key is created, printed by
``vehicle-agent identity`` and ``consent show``, and published on the status
topic; ``export verify`` only calls a key trusted when its fingerprint is one the
owner gave (``agent/export/trust.py``).

``cryptography`` is imported by the functions that need it, not with this module: it is ~6 MB of the
service's memory (budget 60 MB), and the service only needs the fingerprint, which ``key_file_fingerprint``
remembers next to the key (keyed by the key file's SHA-256), so a service whose key exists never loads it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from agent.privacy.durable import ensure_private_dir, write_replace

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

log = logging.getLogger(__name__)

KEY_FILE = "vehicle-signing-key.pem"
FINGERPRINT_FILE = "vehicle-signing-key.fingerprint"  # {"key_file_sha256": ..., "fingerprint": ...}
FINGERPRINT_PREFIX = "SHA256:"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class SigningKeyError(ValueError):
    pass


def load_or_create_key(state_dir: str | Path) -> Ed25519PrivateKey:
    """The vehicle key from ``state_dir``; generated (0600) if there is none yet."""
    state = Path(state_dir)
    ensure_private_dir(state)
    path = state / KEY_FILE
    created = not path.exists() and _create(path)
    key = load_private_key(path)
    if created:
        log.warning("vehicle signing key created: fingerprint %s (%s); exports signed by any other key are not "
                    "from this vehicle: give this fingerprint to the owner (`vehicle-agent identity` shows it again)",
                    display_fingerprint(key), path)
    return key


def existing_key(state_dir: str | Path) -> Ed25519PrivateKey | None:
    """The vehicle key if it was created already (None otherwise); never creates one."""
    path = Path(state_dir) / KEY_FILE
    return load_private_key(path) if path.exists() else None


def key_file_fingerprint(state_dir: str | Path, create: bool = True) -> str | None:
    """The 64-hex fingerprint of the vehicle key in ``state_dir``; the key is made first when ``create`` and
    it is missing (None when it is missing and not ``create``).  Taken from ``FINGERPRINT_FILE`` while that
    names the SHA-256 of the key file's current bytes, else computed from those bytes and written there.

    :raises SigningKeyError: the key file is readable by others, or not an Ed25519 PEM key.
    """
    state = Path(state_dir)
    path = state / KEY_FILE
    if not path.exists():
        if not create:
            return None
        load_or_create_key(state)
    data = _read_key_file(path)
    digest = hashlib.sha256(data).hexdigest()
    memo = state / FINGERPRINT_FILE
    try:
        saved = json.loads(memo.read_text(encoding="utf-8"))
        if saved["key_file_sha256"] == digest and _HEX64.match(saved["fingerprint"]):
            return saved["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # missing, stale or damaged: computed again below
    value = fingerprint(_private_key_from(data, path))
    try:
        write_replace(memo, json.dumps({"key_file_sha256": digest, "fingerprint": value}).encode())
    except OSError as exc:  # a read-only state directory: computed again next time, nothing else lost
        log.debug("cannot remember the signing key's fingerprint in %s: %s", memo, exc)
    return value


def _create(path: Path) -> bool:
    """Make the key; False when another process made it first (theirs is kept)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    # Unique per attempt: two threads (or processes) may make the key at the same moment; one link wins.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(pem)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)  # fails if another process created the key meanwhile: keep theirs
        except FileExistsError:
            return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    return True


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    path = Path(path)
    return _private_key_from(_read_key_file(path), path)


def _read_key_file(path: Path) -> bytes:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise SigningKeyError(f"{path}: signing key is readable by others (mode {mode:o}); chmod 600 it")
    return path.read_bytes()


def _private_key_from(data: bytes, path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError as exc:
        raise SigningKeyError(f"{path}: not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path}: not an Ed25519 key")
    return key


def _public(key: Ed25519PrivateKey | Ed25519PublicKey) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return key.public_key() if isinstance(key, Ed25519PrivateKey) else key


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return _public(key).public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_pem(data: bytes, where: str) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise SigningKeyError(f"{where}: not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{where}: not an Ed25519 public key")
    return key


def fingerprint(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """SHA-256 of the raw 32-byte public key, hex: short enough to read out to an owner."""
    from cryptography.hazmat.primitives import serialization

    raw = _public(key).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def display_fingerprint(key: Ed25519PrivateKey | Ed25519PublicKey | str) -> str:
    """``SHA256:<64 hex>``: how the fingerprint is shown to owners and given back to ``export verify``."""
    return FINGERPRINT_PREFIX + (key if isinstance(key, str) else fingerprint(key))


def parse_fingerprint(text: str) -> str:
    """The 64 hex digits of ``SHA256:ab12...``, ``ab12...`` or ``AB:12:...`` (ValueError otherwise)."""
    value = text.strip()
    if value[:len(FINGERPRINT_PREFIX)].upper() == FINGERPRINT_PREFIX.upper():
        value = value[len(FINGERPRINT_PREFIX):]
    value = re.sub(r"[\s:]", "", value).lower()
    if not _HEX64.match(value):
        raise ValueError(f"not a key fingerprint: {text.strip()[:80]!r} (expected SHA256: and 64 hex digits, as "
                         "`vehicle-agent identity` prints it)")
    return value


def sign(key: Ed25519PrivateKey, data: bytes) -> str:
    """Detached signature, base64 text (one line)."""
    return base64.b64encode(key.sign(data)).decode("ascii")


def signature_valid(public: Ed25519PublicKey, data: bytes, signature_text: str) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        signature = base64.b64decode(signature_text.strip(), validate=True)
        public.verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True
