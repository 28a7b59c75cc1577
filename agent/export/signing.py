"""The vehicle's Ed25519 signing key (``cryptography``), used to sign owner exports.

The private key lives in the state directory as PKCS#8 PEM with mode 0600 and
is created on first use.  Creation uses O_EXCL on a temporary name and a hard
link into place, so two processes starting at once end up with one key and a
reader never sees a half-written file.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.privacy.durable import ensure_private_dir

KEY_FILE = "vehicle-signing-key.pem"


class SigningKeyError(ValueError):
    pass


def load_or_create_key(state_dir: str | Path) -> Ed25519PrivateKey:
    """The vehicle key from ``state_dir``; generated (0600) if there is none yet."""
    state = Path(state_dir)
    ensure_private_dir(state)
    path = state / KEY_FILE
    if not path.exists():
        _create(path)
    return load_private_key(path)


def _create(path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    temporary = path.with_name(f".{path.name}.{os.getpid()}.new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(pem)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)  # fails if another process created the key meanwhile: keep theirs
        except FileExistsError:
            pass
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


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
