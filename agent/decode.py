"""Decode stage: python-can frames -> ``DecodedFrame`` (raw signal values).

cantools does every bit of DBC work (``Message.decode(scaling=False)``); this
module only finds the right message fast, filters out what nobody asked for
before decoding, caches decodes of repeated payloads (most CAN payloads repeat),
and counts what happens to each frame.  A bad frame is counted, never fatal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import can
from cantools.database import Message
from cantools.j1939 import pgn_from_frame_id

from agent.catalog import Catalog
from agent.dbc import LoadedDbc
from agent.model import DATA_ROLE, UNCLASSIFIED, BusCounters, DecodedFrame, SignalSpec

EXTENDED_FLAG = 0x8000_0000
# Repeated payloads are common (status messages rarely change).  Caching the
# decode of the last few thousand distinct payloads per message is what makes
# this stage faster than calling cantools on every frame.
CACHE_LIMIT = 1024

# Frame ids learned to be unknown are remembered, up to this many per bus, so
# that J1939 PGN matching runs once per id, not once per frame.
LEARNED_ID_LIMIT = 65536
_UNKNOWN = object()  # routing-table entry: no message for this id
_MISSING = object()  # not in the routing table yet

SignalFilter = Callable[[SignalSpec], bool]
ALL_DBCS = "*"


def spec_for(message: Message, signal, catalog: Catalog) -> SignalSpec:
    key = f"{message.name}.{signal.name}"
    entry = catalog.lookup(key)
    choices = {int(k): str(v) for k, v in (signal.choices or {}).items()}
    return SignalSpec(
        key=key,
        message=message.name,
        signal=signal.name,
        scale=signal.scale,
        offset=signal.offset,
        is_float=bool(signal.is_float),
        is_signed=bool(signal.is_signed),
        length=signal.length,
        minimum=signal.minimum,
        maximum=signal.maximum,
        unit=(entry.unit if entry and entry.unit else signal.unit) or "",
        choices=choices,
        vss_path=entry.vss if entry and entry.vss else key,
        category=entry.category if entry else UNCLASSIFIED,
        role=entry.role if entry else DATA_ROLE,
    )


@dataclass(slots=True, eq=False)
class _Route:
    message: Message
    # None: every signal wanted (no copy needed); else the wanted signal names.
    wanted: frozenset[str] | None
    cache: dict[bytes, dict]
    name: str = ""  # message.name, read once (cantools' name is a property, read per frame otherwise)

    def __post_init__(self) -> None:
        self.name = self.message.name


class Decoder:
    """Decodes frames of several buses, each with its own DBCs.

    ``bus_dbcs`` maps bus name to its DBCs; the key ``"*"`` holds DBCs that
    apply to every bus (handy for logs whose channels are not configured).
    ``j1939_buses`` names buses whose extended frames also match on PGN; ``"*"``
    means every bus.  DBCs that declare ProtocolType J1939 always match on PGN.
    """

    def __init__(
        self,
        bus_dbcs: dict[str, list[LoadedDbc]],
        catalog: Catalog | None = None,
        wanted: SignalFilter | None = None,
        j1939_buses: Iterable[str] = (),
    ) -> None:
        self._bus_dbcs = bus_dbcs
        self._catalog = catalog or Catalog.empty()
        self._wanted = wanted
        self._j1939_buses = set(j1939_buses)
        self.specs: dict[str, SignalSpec] = {}
        self.counters: dict[str, BusCounters] = {}
        self.message_counts: dict[tuple[str, str], int] = {}
        self._exact: dict[str, dict[int, object]] = {}
        self._by_pgn: dict[str, dict[int, _Route | None]] = {}
        for dbcs in bus_dbcs.values():
            for loaded in dbcs:
                for message in loaded.database.messages:
                    for signal in message.signals:
                        spec = spec_for(message, signal, self._catalog)
                        self.specs.setdefault(spec.key, spec)

    @property
    def wanted(self) -> SignalFilter | None:
        """The signal filter this decoder was made with (None: every signal)."""
        return self._wanted

    # -- routing tables, built per bus on first sight of the bus -------------------
    def _route(self, message: Message) -> _Route | None:
        if self._wanted is None:
            return _Route(message, None, {})
        names = frozenset(s.name for s in message.signals if self._wanted(self.specs[f"{message.name}.{s.name}"]))
        if not names:
            return None
        if len(names) == len(message.signals):
            return _Route(message, None, {})
        return _Route(message, names, {})

    def _build(self, bus: str) -> None:
        exact: dict[int, _Route | None] = {}
        by_pgn: dict[int, _Route | None] = {}
        dbcs = [*self._bus_dbcs.get(ALL_DBCS, []), *self._bus_dbcs.get(bus, [])]
        force_j1939 = bus in self._j1939_buses or "*" in self._j1939_buses
        for loaded in dbcs:
            for message in loaded.database.messages:
                route = self._route(message)
                key = message.frame_id | (EXTENDED_FLAG if message.is_extended_frame else 0)
                exact.setdefault(key, route)
                if message.is_extended_frame and (force_j1939 or message.protocol == "j1939"):
                    by_pgn.setdefault(pgn_from_frame_id(message.frame_id), route)
        self._exact[bus] = exact
        self._by_pgn[bus] = by_pgn
        # setdefault: counters carried over from a previous decoder (reload) keep counting.
        self.counters.setdefault(bus, BusCounters())

    def routes(self, bus: str) -> dict[int, _Route | None]:
        if bus not in self._exact:
            self._build(bus)
        return self._exact[bus]

    # -- hot path ------------------------------------------------------------------
    def decode(self, msg: can.Message, bus: str) -> DecodedFrame | None:
        exact = self._exact.get(bus)
        if exact is None:
            self._build(bus)
            exact = self._exact[bus]
        counters = self.counters[bus]
        counters.frames += 1
        if msg.is_error_frame:
            counters.error_frames += 1
            return None
        if msg.is_remote_frame:
            counters.remote_frames += 1
            return None
        frame_id = msg.arbitration_id
        key = frame_id | EXTENDED_FLAG if msg.is_extended_id else frame_id
        route = exact.get(key, _UNKNOWN)
        if route is _UNKNOWN:
            if key in exact:
                counters.unknown_id += 1
                return None
            route = self._learn(bus, key, msg)
            if route is _UNKNOWN:
                counters.unknown_id += 1
                return None
        if route is None:
            counters.filtered += 1
            return None
        data = bytes(msg.data)
        raw = route.cache.get(data)
        if raw is None:
            message = route.message
            if len(data) < message.length:
                counters.wrong_length += 1
                return None
            try:
                decoded = message.decode(data, decode_choices=False, scaling=False)
            except Exception:  # cantools raises DecodeError and friends: count, never fail
                counters.decode_errors += 1
                return None
            if route.wanted is not None:
                wanted = route.wanted
                decoded = {name: value for name, value in decoded.items() if name in wanted}
            if len(route.cache) >= CACHE_LIMIT:
                route.cache.clear()
            route.cache[data] = raw = decoded
        counters.decoded += 1
        name = route.name
        count_key = (bus, name)
        self.message_counts[count_key] = self.message_counts.get(count_key, 0) + 1
        return DecodedFrame(msg.timestamp, bus, frame_id, name, raw)

    def decode_block(self, msgs: list[can.Message], bus: str) -> list[DecodedFrame | None]:
        """``decode`` of each frame of one bus, in order (one entry per frame, None where ``decode`` gives
        None), with the same counters at the end.  The common frame (a known id, a payload seen before) is
        decoded here with the bus's tables and counters looked up once per block; any other goes through
        ``decode``."""
        exact = self._exact.get(bus)
        if exact is None:
            self._build(bus)
            exact = self._exact[bus]
        counters = self.counters[bus]
        decode = self.decode
        frames: list[DecodedFrame | None] = []
        append = frames.append
        per_message: dict[str, int] = {}
        unknown = filtered = 0
        for msg in msgs:
            if not (msg.is_error_frame or msg.is_remote_frame):
                frame_id = msg.arbitration_id
                route = exact.get(frame_id | EXTENDED_FLAG if msg.is_extended_id else frame_id, _MISSING)
                if route is _UNKNOWN:
                    unknown += 1
                    append(None)
                    continue
                if route is None:
                    filtered += 1
                    append(None)
                    continue
                if route is not _MISSING:
                    raw = route.cache.get(bytes(msg.data))
                    if raw is not None:
                        name = route.name
                        per_message[name] = per_message.get(name, 0) + 1
                        append(DecodedFrame(msg.timestamp, bus, frame_id, name, raw))
                        continue
            append(decode(msg, bus))  # counts itself
        cached = sum(per_message.values())
        counters.frames += cached + unknown + filtered
        counters.decoded += cached
        counters.unknown_id += unknown
        counters.filtered += filtered
        counts = self.message_counts
        for name, count in per_message.items():
            key = (bus, name)
            counts[key] = counts.get(key, 0) + count
        return frames

    def _learn(self, bus: str, key: int, msg: can.Message):
        """Slow path for an id not in the table: J1939 PGN match, then remember the answer."""
        route = _UNKNOWN
        by_pgn = self._by_pgn[bus]
        if msg.is_extended_id and by_pgn:
            route = by_pgn.get(pgn_from_frame_id(msg.arbitration_id), _UNKNOWN)
        exact = self._exact[bus]
        if len(exact) < LEARNED_ID_LIMIT:
            exact[key] = route
        return route

    def physical(self, frame: DecodedFrame) -> dict[str, int | float]:
        """Physical values of a frame (for output; not used on the hot path)."""
        specs = self.specs
        prefix = frame.message + "."
        return {name: specs[prefix + name].to_physical(value) for name, value in frame.raw.items()}

    def total(self) -> BusCounters:
        total = BusCounters()
        for counters in self.counters.values():
            for name, value in counters.as_dict().items():
                setattr(total, name, getattr(total, name) + value)
        return total
