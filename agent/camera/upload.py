"""Camera event metadata as upload batches: stream ``camera``, above telemetry.

Batch bodies hold numbers only (``agent.batch.columns``), so a camera batch
carries one table ``camera_event`` on bus ``camera`` with the numeric fields
of each event (one row per event, at the event's time) and the header's
``camera_events`` list with each event's full metadata record exactly as
``camera_decision`` produced it (ids, camera, trigger: text).  Neither holds
pixels, clip paths or anything ``camera_decision`` did not let out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from agent.batch.compression import batch_compressor
from agent.batch.format import DEFAULT_LEVEL, EncodedBatch, TableData, encode_batch
from agent.batch.identity import BatchNumbers
from agent.camera.rules import CAMERA_PRIORITY, CAMERA_STREAM, Outgoing

NUMERIC_FIELDS = ("faces", "plates", "anonymised", "metadata_only")


def _numbers(outgoing: Outgoing) -> dict[str, int | float]:
    record = outgoing.record
    values: dict[str, int | float] = {name: int(record[name]) for name in NUMERIC_FIELDS}
    values["duration_s"] = float(record["clip"]["duration_s"])
    location = record.get("location")
    if location is not None:
        values["lat"] = float(location["lat"])
        values["lon"] = float(location["lon"])
    return values


def camera_batch(outgoing: Sequence[Outgoing], vehicle_id: str, numbers: BatchNumbers, consent_version: int,
                 bench: bool = False, clock: Callable[[], float] = time.time,
                 level: int = DEFAULT_LEVEL) -> EncodedBatch:
    """One batch of camera events (each already passed ``camera_decision``)."""
    if not outgoing:
        raise ValueError("a camera batch needs at least one event")
    if any(item.stream != CAMERA_STREAM for item in outgoing):
        raise ValueError("only camera_decision output belongs in a camera batch")
    tables: dict[tuple[str, ...], TableData] = {}
    for item in sorted(outgoing, key=lambda o: o.timestamp):
        values = _numbers(item)
        key = tuple(values)
        table = tables.get(key)
        if table is None:
            table = tables[key] = TableData("camera", "camera_event", False, key, [], [])
        table.timestamps.append(item.timestamp)
        table.rows.append(tuple(values.values()))
    categories = sorted(set().union(*(item.categories for item in outgoing)))
    header = {"vehicle_id": vehicle_id, **numbers.header_fields(), "stream": CAMERA_STREAM,
              "priority": CAMERA_PRIORITY, "categories": categories, "consent_version": consent_version,
              "bench": bench, "created": clock(),
              "camera_events": [item.record for item in sorted(outgoing, key=lambda o: o.timestamp)]}
    return encode_batch(header, list(tables.values()), batch_compressor(level))
