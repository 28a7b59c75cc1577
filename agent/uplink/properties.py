"""MQTT v5 user properties that repeat the batch header (docs/payload.md, "MQTT").

They let a receiver route, deduplicate and detect gaps without decompressing
the payload.  The header's ``sha256`` covers only the body, so one more
property, ``payload_sha256``, is the SHA-256 of the whole payload as sent: the
receiver checks it first, and a damaged byte anywhere (header included) is
caught.  All values are strings (MQTT user properties are UTF-8 pairs).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

CONTENT_TYPE = "application/vnd.vehicle-batch+msgpack"
PAYLOAD_SHA256 = "payload_sha256"

# Header fields repeated as properties, in this order (names as in agent.batch.format).
PROPERTY_FIELDS = ("schema", "vehicle_id", "store_epoch", "boot_id", "seq", "stream", "priority", "categories",
                   "consent_version", "bench", "t_min", "t_max", "rows", "samples", "created", "zstd_dict", "sha256")


def property_text(value: Any) -> str:
    """The one text form of a header value (the receiver compares with the same function)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(sorted(str(v) for v in value))
    if isinstance(value, float):
        return repr(value)
    return str(value)


def user_properties(batch: Any) -> list[tuple[str, str]]:
    """Properties for one stored batch (``agent.buffer.store.StoredBatch``): its header
    fields, falling back to the stored columns for the identity fields."""
    header: Mapping[str, Any] = getattr(batch, "header", None) or {}
    pairs: list[tuple[str, str]] = [(PAYLOAD_SHA256, hashlib.sha256(batch.payload).hexdigest())]
    for name in PROPERTY_FIELDS:
        value = header.get(name)
        if value is None and name in ("boot_id", "seq", "stream", "priority", "categories", "sha256"):
            value = getattr(batch, name, None)
        if value is not None:
            pairs.append((name, property_text(value)))
    return pairs


def parse_user_properties(pairs: Iterable[tuple[str, str]] | None) -> dict[str, str]:
    """User properties as a dict (the last value wins for a repeated name)."""
    return {str(name): str(value) for name, value in (pairs or ())}
