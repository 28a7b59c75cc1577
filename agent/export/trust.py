"""The owner's trusted vehicle keys: the signing-key fingerprints ``export verify`` accepts as "my vehicle".

An export carries the public key it was signed with, so a valid signature alone only proves that the export
is intact, not who made it.  The owner learns the vehicle's fingerprint out of band (``vehicle-agent identity``
on the vehicle, the log line written when the key was created, ``consent show``, the status topic) and keeps
it here, or passes it to ``export verify`` with ``--fingerprint`` / ``--key``.

The trust file (default ``$XDG_CONFIG_HOME/vehicle-agent/trusted-keys``, else ``~/.config/...``) holds one
fingerprint per line, optionally followed by a label; ``#`` starts a comment::

    SHA256:3f0c...e91a  my car (VIN ends 8834)
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.export.signing import display_fingerprint, parse_fingerprint
from agent.privacy.durable import append_synced, file_lock

TRUST_FILE_NAME = "trusted-keys"
MAX_TRUST_FILE_BYTES = 1 << 20
LABEL_MAX = 80


def default_trust_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "vehicle-agent" / TRUST_FILE_NAME


def read_trust_file(path: str | Path) -> dict[str, str]:
    """Fingerprint (64 hex) -> label; a missing file is empty.  A bad line raises ValueError naming it."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_TRUST_FILE_BYTES + 1)
    except FileNotFoundError:
        return {}
    if len(data) > MAX_TRUST_FILE_BYTES:
        raise ValueError(f"{path}: larger than {MAX_TRUST_FILE_BYTES} bytes; not a trust file")
    trusted: dict[str, str] = {}
    for number, raw in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        first, _, label = line.partition(" ")
        try:
            trusted[parse_fingerprint(first)] = label.strip()[:LABEL_MAX]
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: {exc}") from None
    return trusted


def add_trusted(path: str | Path, fingerprint_text: str, label: str = "") -> bool:
    """Add a fingerprint (False when it was there already).  The directory is made 0700, the file 0600."""
    path = Path(path)
    hex_digest = parse_fingerprint(fingerprint_text)
    label = " ".join(label.replace("#", " ").split())[:LABEL_MAX]
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with file_lock(path.with_name(path.name + ".lock")):
        if hex_digest in read_trust_file(path):
            return False
        append_synced(path, f"{display_fingerprint(hex_digest)}  {label}".rstrip().encode() + b"\n")
    return True


__all__ = ["TRUST_FILE_NAME", "add_trusted", "default_trust_file", "read_trust_file"]
