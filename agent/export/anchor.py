"""What the vehicle publishes so its ledger and its exports can be checked from outside the car.

The status message's ``health.anchor`` (``vehicle_anchor``)::

    {"ledger_head": {"seq": 42, "line_sha256": "<sha256 of ledger line 42>"}, "signing_key": "SHA256:<64 hex>"}

A receiver that keeps the latest ``ledger_head`` per vehicle holds a copy of the chain's end that nobody in the
car can change afterwards: ``vehicle-agent ledger verify --against FILE`` then finds a ledger rolled back or
rewritten below it.  ``signing_key`` is the fingerprint an owner compares with an export's key.  Neither says
anything about the driver: a count, a hash, and the fingerprint of a public key.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from agent.export.signing import KEY_FILE, display_fingerprint, key_file_fingerprint

log = logging.getLogger(__name__)

_cache: dict[str, tuple[tuple[int, int], str]] = {}  # key path -> ((inode, mtime), fingerprint)
_said: set[str] = set()  # problems already logged (a status is published every minute)
_lock = threading.Lock()


def signing_key_fingerprint(state_dir: str | Path, create: bool = True) -> str | None:
    """``SHA256:<hex>`` of the vehicle's signing key (made now, and logged once, when ``create`` and missing);
    None when there is none.  Cached while the key file is unchanged."""
    path = Path(state_dir) / KEY_FILE
    with _lock:
        try:
            info = path.stat()
            cached = _cache.get(str(path))
            if cached is not None and cached[0] == (info.st_ino, info.st_mtime_ns):
                return cached[1]
        except FileNotFoundError:
            pass
        hex_digits = key_file_fingerprint(state_dir, create)  # without cryptography while the key is unchanged
        if hex_digits is None:
            return None
        info = path.stat()
        value = display_fingerprint(hex_digits)
        _cache[str(path)] = ((info.st_ino, info.st_mtime_ns), value)
        return value


def _once(what: str, exc: Exception) -> None:
    text = f"{what}: {exc}"
    if text not in _said:
        _said.add(text)
        log.warning("status anchor: %s", text)


def vehicle_anchor(ledger: Any) -> dict[str, Any]:
    """For the status message (``health()``): never raises; what cannot be read is None."""
    anchor: dict[str, Any] = {"ledger_head": None, "signing_key": None}
    if ledger is None:
        return anchor
    try:
        anchor["ledger_head"] = ledger.anchor()
    except Exception as exc:  # a status report must never fail because of the ledger
        _once("cannot read the ledger's head", exc)
    try:
        anchor["signing_key"] = signing_key_fingerprint(Path(ledger.path).parent)
    except Exception as exc:
        _once("cannot read the signing key", exc)
    return anchor


__all__ = ["signing_key_fingerprint", "vehicle_anchor"]
