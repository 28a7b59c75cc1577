"""A stored incident snapshot as upload batches: stream ``incident``, the highest priority.

Only under ``incident`` consent.  What leaves is the decoded signals of the
snapshot's categories at full rate (DBC raw values with scale/offset, the
usual batch tables), never the raw CAN frames: a raw frame carries every
signal of its message, including ones nobody consented to (the frames stay in
the car and in the owner's export).  Signals are treated as incident data,
with these exceptions, the same as for telemetry:

* ``cabin``, ``identity`` and ``unclassified`` signals never leave;
* location leaves only while ``location`` is granted, as latitude/longitude
  coarsened to the owner's level (``agent.privacy.transforms``), and nothing
  from inside a privacy zone; other location signals (altitude, heading,
  accuracy) are dropped.

Each batch header carries ``incident`` (snapshot id, trigger, window, part
k of n) so the receiver can put the parts together.  The stream is meant to
be in the BatchStore's ``never_evict`` set: a snapshot waiting for the network
survives quota pressure that evicts telemetry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from agent.batch.compression import batch_compressor
from agent.batch.format import DEFAULT_LEVEL, EncodedBatch, TableData, encode_batch
from agent.batch.identity import BatchNumbers
from agent.incident.store import StoredSnapshot
from agent.model import DecodedFrame, SignalSpec
from agent.privacy.decision import (
    DROP,
    INCIDENT,
    LATITUDE,
    NEVER_IN_INCIDENTS,
    POSITION_PATHS,
    category_of,
    location_suppressed,
    position_coarseners,
    signal_action,
)

INCIDENT_STREAM = INCIDENT
INCIDENT_PRIORITY = 100  # above camera events (50) and telemetry (0)
_TRIAL = BatchNumbers("", "", 0)  # numbers of a trial encoding that only measures the size


class PolicyLike(Protocol):
    bench: bool

    def is_granted(self, category: str, now: float | None = None) -> bool: ...

    @property
    def view(self) -> Any: ...

    @property
    def version(self) -> int: ...


class _Shaper:
    """Per frame: which signals leave, and how (raw value, or coarsened physical position).  What may leave
    is ``agent.privacy.decision``'s call; this only picks the snapshot's categories and lays out values."""

    def __init__(self, specs: Mapping[str, SignalSpec], categories: Sequence[str], policy: PolicyLike,
                 now: float) -> None:
        self.specs = specs
        self.categories = frozenset(categories) - NEVER_IN_INCIDENTS
        self.view = policy.view
        self.now = now
        self.coarse = position_coarseners(self.view)
        self.latitude = self.longitude = float("nan")

    def shape(self, frame: DecodedFrame) -> tuple[dict, dict]:
        """(raw values, physical values) of the frame that may leave."""
        raw: dict = {}
        physical: dict = {}
        prefix = frame.message + "."
        found = [(name, value, self.specs.get(prefix + name)) for name, value in frame.raw.items()]
        for _name, value, spec in found:  # the frame's own position decides the zone check
            if spec is not None and spec.vss_path in POSITION_PATHS:
                self._track(spec, spec.to_physical(value))
        for name, value, spec in found:
            if spec is None or category_of(spec) not in self.categories:
                continue
            action = signal_action(self.view, spec, self.now, incident=True)
            if action == DROP:
                continue
            if category_of(spec) != "location":
                raw[name] = value
                continue
            if self.coarse is None or location_suppressed(self.view, self.latitude, self.longitude):
                continue
            physical[name] = self.coarse[0 if action == LATITUDE else 1](spec.to_physical(value))
        return raw, physical

    def _track(self, spec: SignalSpec, value: float) -> None:
        if spec.vss_path == POSITION_PATHS[0]:
            self.latitude = value
        else:
            self.longitude = value


def _tables(frames: list[tuple[DecodedFrame, dict, dict]], specs: Mapping[str, SignalSpec]) -> list[TableData]:
    tables: dict[tuple, TableData] = {}
    for frame, raw, physical in frames:
        for values, is_raw in ((raw, True), (physical, False)):
            if not values:
                continue
            key = (frame.bus, frame.message, is_raw, tuple(values))
            table = tables.get(key)
            if table is None:
                table = tables[key] = TableData(frame.bus, frame.message, is_raw, tuple(values), [], [])
                if is_raw:
                    found = [specs[f"{frame.message}.{name}"] for name in values]
                    table.scales = [s.scale for s in found]
                    table.offsets = [s.offset for s in found]
            table.timestamps.append(frame.timestamp)
            table.rows.append(tuple(values.values()))
    return list(tables.values())


def snapshot_batches(stored: StoredSnapshot, policy: PolicyLike, vehicle_id: str,
                     numbering: Callable[[], BatchNumbers],
                     max_bytes: int = 256 * 1024, now: float | None = None,
                     clock: Callable[[], float] = time.time, level: int = DEFAULT_LEVEL) -> list[EncodedBatch]:
    """The snapshot's upload batches; empty without ``incident`` consent (it then stays in the car)."""
    now = clock() if now is None else now
    if not policy.is_granted(INCIDENT_STREAM, now):
        return []
    info = stored.info
    shaper = _Shaper(stored.specs, info.categories, policy, now)
    shaped = []
    for frame in stored.decoded:
        raw, physical = shaper.shape(frame)
        if raw or physical:
            shaped.append((frame, raw, physical))
    if not shaped:
        return []
    categories = sorted({"incident"} | ({"location"} if any(p for _, _, p in shaped) else set()))
    compressor = batch_compressor(level)
    meta: dict[str, Any] = {"id": info.id, "trigger": info.trigger.name, "time": info.trigger.timestamp,
                            "triggers": [hit.name for hit in info.triggers], "start": info.start, "end": info.end,
                            "complete": info.complete}

    def header(part: int, parts: int, numbers: BatchNumbers) -> dict:
        return {"vehicle_id": vehicle_id, **numbers.header_fields(), "stream": INCIDENT_STREAM,
                "priority": INCIDENT_PRIORITY, "categories": categories, "consent_version": policy.version,
                "bench": policy.bench, "created": clock(), "incident": {**meta, "part": part, "parts": parts}}

    # Split by time until every part fits; then number the parts and encode them for real.
    chunks = [shaped]
    fitted: list[list] = []
    while chunks:
        chunk = chunks.pop(0)
        trial = encode_batch(header(0, 0, _TRIAL), _tables(chunk, stored.specs), compressor)
        if len(trial.payload) <= max_bytes or len(chunk) == 1:
            fitted.append(chunk)
        else:
            middle = len(chunk) // 2
            chunks[:0] = [chunk[:middle], chunk[middle:]]
    return [encode_batch(header(index, len(fitted), numbering()), _tables(chunk, stored.specs), compressor)
            for index, chunk in enumerate(fitted, start=1)]
