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
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import re
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.privacy.durable import ensure_private_dir

log = logging.getLogger(__name__)

KEY_FILE = "vehicle-signing-key.pem"
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


def _create(path: Path) -> bool:
    """Make the key; False when another process made it first (theirs is kept)."""
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
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise SigningKeyError(f"{path}: signing key is readable by others (mode {mode:o}); chmod 600 it")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError as exc:
        raise SigningKeyError(f"{path}: not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path}: not an Ed25519 key")
    return key


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_pem(data: bytes, where: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise SigningKeyError(f"{where}: not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{where}: not an Ed25519 public key")
    return key


def fingerprint(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """SHA-256 of the raw 32-byte public key, hex: short enough to read out to an owner."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
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
    try:
        signature = base64.b64decode(signature_text.strip(), validate=True)
        public.verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True
