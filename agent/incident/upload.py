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

import zstandard

from agent.batch.format import DEFAULT_LEVEL, EncodedBatch, TableData, encode_batch
from agent.incident.store import StoredSnapshot
from agent.model import DecodedFrame, SignalSpec
from agent.privacy.filter import LATITUDE_VSS, LONGITUDE_VSS, category_of
from agent.privacy.transforms import ZoneCircle, in_any_zone, latitude_coarsener, longitude_coarsener

INCIDENT_STREAM = "incident"
INCIDENT_PRIORITY = 100  # above camera events (50) and telemetry (0)
NEVER_LEAVE = frozenset({"cabin", "identity", "unclassified"})


class PolicyLike(Protocol):
    bench: bool

    def is_granted(self, category: str, now: float | None = None) -> bool: ...

    def level(self, category: str) -> str | None: ...

    @property
    def version(self) -> int: ...


def _zones(policy: PolicyLike) -> tuple[ZoneCircle, ...]:
    return tuple(getattr(getattr(policy, "view", None), "zones", ()) or ())


class _Shaper:
    """Per message: which signals leave, and how (raw value, or coarsened physical)."""

    def __init__(self, specs: Mapping[str, SignalSpec], categories: Sequence[str], policy: PolicyLike,
                 now: float) -> None:
        self.specs = specs
        self.categories = frozenset(categories) - NEVER_LEAVE
        self.location = "location" in self.categories and policy.is_granted("location", now)
        level = policy.level("location")
        self.exact = policy.bench and level is None
        self.coarse = {LATITUDE_VSS: latitude_coarsener(level) if level else None,
                       LONGITUDE_VSS: longitude_coarsener(level) if level else None}
        self.zones = _zones(policy)
        self.latitude = self.longitude = float("nan")

    def shape(self, frame: DecodedFrame) -> tuple[dict, dict]:
        """(raw values, physical values) of the frame that may leave."""
        raw: dict = {}
        physical: dict = {}
        prefix = frame.message + "."
        found = [(name, value, self.specs.get(prefix + name)) for name, value in frame.raw.items()]
        for _name, value, spec in found:  # the frame's own position decides the zone check
            if spec is not None and spec.vss_path in (LATITUDE_VSS, LONGITUDE_VSS):
                self._track(spec, spec.to_physical(value))
        for name, value, spec in found:
            category = category_of(spec)  # latitude/longitude count as location whatever the catalog says
            if spec is None or category not in self.categories:
                continue
            if category != "location":
                raw[name] = value
                continue
            if not self.location or spec.vss_path not in self.coarse or self._in_zone():
                continue
            coarsen = self.coarse[spec.vss_path]
            if coarsen is not None:
                physical[name] = coarsen(spec.to_physical(value))
            elif self.exact:
                physical[name] = spec.to_physical(value)
        return raw, physical

    def _track(self, spec: SignalSpec, value: float) -> None:
        if spec.vss_path == LATITUDE_VSS:
            self.latitude = value
        else:
            self.longitude = value

    def _in_zone(self) -> bool:
        if not self.zones:
            return False
        if self.latitude != self.latitude or self.longitude != self.longitude:
            return True  # position unknown while zones exist: fail closed
        return in_any_zone(self.zones, self.latitude, self.longitude)


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


def snapshot_batches(stored: StoredSnapshot, policy: PolicyLike, vehicle_id: str, boot_id: str,
                     seq_source: Callable[[], int | tuple[int, int]],
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
    compressor = zstandard.ZstdCompressor(level=level)
    meta: dict[str, Any] = {"id": info.id, "trigger": info.trigger.name, "time": info.trigger.timestamp,
                            "triggers": [hit.name for hit in info.triggers], "start": info.start, "end": info.end,
                            "complete": info.complete}

    def header(part: int, parts: int, seq: int | tuple[int, int]) -> dict:
        # seq may come with the incident stream's own number: (seq, stream_seq).
        seq, stream_seq = seq if isinstance(seq, tuple) else (seq, None)
        fields = {"vehicle_id": vehicle_id, "boot_id": boot_id, "seq": seq, "stream": INCIDENT_STREAM,
                  "priority": INCIDENT_PRIORITY, "categories": categories, "consent_version": policy.version,
                  "bench": policy.bench, "created": clock(), "incident": {**meta, "part": part, "parts": parts}}
        if stream_seq is not None:
            fields["stream_seq"] = stream_seq
        return fields

    # Split by time until every part fits; then number the parts and encode them for real.
    chunks = [shaped]
    fitted: list[list] = []
    while chunks:
        chunk = chunks.pop(0)
        trial = encode_batch(header(0, 0, 0), _tables(chunk, stored.specs), compressor)
        if len(trial.payload) <= max_bytes or len(chunk) == 1:
            fitted.append(chunk)
        else:
            middle = len(chunk) // 2
            chunks[:0] = [chunk[:middle], chunk[middle:]]
    return [encode_batch(header(index, len(fitted), seq_source()), _tables(chunk, stored.specs), compressor)
            for index, chunk in enumerate(fitted, start=1)]
