"""DTC changes as upload batches: stream ``diagnostics``, category ``vehicle_health``.

Batch bodies hold numbers only (``agent.batch.columns``): one table ``dtc_event`` on the bus the reading
came from, one row per change at its time (the DTC number, the ECU's response id, the status byte or -1,
and the change as 1 appeared / 2 status_changed / 3 cleared); the header's ``dtc_events`` list carries
each change's full record (code as text, source kind, status bit names) as ``DtcChange.as_dict`` makes it.
Whether vehicle_health may leave is the consent gate's call (``agent.flow.gate``), as for every batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from agent.batch.compression import batch_compressor
from agent.batch.format import DEFAULT_LEVEL, EncodedBatch, TableData, encode_batch
from agent.batch.identity import BatchNumbers
from agent.diag.dtc import DtcChange

DIAGNOSTICS_STREAM = "diagnostics"
DIAGNOSTICS_PRIORITY = 2  # above telemetry (0/1): a fault code is worth more than a sample
DIAGNOSTICS_CATEGORY = "vehicle_health"
CHANGE_CODES = {"appeared": 1, "status_changed": 2, "cleared": 3}
COLUMNS = ("dtc", "ecu", "status", "change")


def dtc_batch(changes: Sequence[DtcChange], vehicle_id: str, numbers: BatchNumbers, consent_version: int,
              bench: bool = False, clock: Callable[[], float] = time.time,
              level: int = DEFAULT_LEVEL) -> EncodedBatch:
    if not changes:
        raise ValueError("a diagnostics batch needs at least one DTC change")
    ordered = sorted(changes, key=lambda c: (c.time, c.bus, c.ecu, c.raw))
    tables: dict[str, TableData] = {}
    for change in ordered:
        table = tables.get(change.bus)
        if table is None:
            table = tables[change.bus] = TableData(change.bus, "dtc_event", False, COLUMNS, [], [])
        table.timestamps.append(change.time)
        status = -1 if change.status is None else change.status
        table.rows.append((change.raw, change.ecu, status, CHANGE_CODES[change.change]))
    header = {"vehicle_id": vehicle_id, **numbers.header_fields(), "stream": DIAGNOSTICS_STREAM,
              "priority": DIAGNOSTICS_PRIORITY, "categories": [DIAGNOSTICS_CATEGORY],
              "consent_version": consent_version, "bench": bench, "created": clock(),
              "dtc_events": [change.as_dict() for change in ordered]}
    return encode_batch(header, list(tables.values()), batch_compressor(level))


__all__ = ["DIAGNOSTICS_CATEGORY", "DIAGNOSTICS_STREAM", "dtc_batch"]
