"""``TransportChecker``: rolling counters and checksums of raw frames, counted per bus and message.

The pipeline hands it every raw frame (``on_raw(bus, msg)``).  A frame whose message carries no counter or
checksum costs one dict lookup.  For the others it reads only the transport fields (bit shifts, no cantools
decode), judges each counter step (``agent.integrity.counters``) and recomputes each checksum whose algorithm
is known (``agent.integrity.checksums``); a checksum without a known algorithm is counted as "not checked",
never as a failure.  A frame shorter than its DBC message is counted as ``short`` and not checked.

Counts per message (``snapshot()``; ``total()`` sums them): ``frames`` seen, ``checked`` (long enough),
``short``; per counter step ``counter_ok``, ``counter_jumps``, ``counter_repeats``, ``counter_resyncs`` (a
message with two counters makes two steps per frame); per checksum ``checksum_ok``, ``checksum_failures``,
``checksum_not_checked``.

Which signals are counters and checksums comes from the caller: ``from_dbcs`` asks a ``role(message, signal)``
callback (the catalog's ``role:``, or ``agent.integrity.infer.role_by_name``).  Frames match messages by exact
id (no J1939 PGN matching: J1939 messages carry no rolling counters in their DBCs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields

import can
from cantools.database import Message

from agent.dbc import LoadedDbc
from agent.decode import ALL_DBCS, EXTENDED_FLAG
from agent.integrity.checksums import Algorithm, algorithm_for, known
from agent.integrity.counters import GAP_SECONDS, JUMP, OK, REPEAT, RESET_SECONDS, CounterTrack
from agent.integrity.fields import Field, group_fields

COUNTER_ROLE = "counter"
CHECKSUM_ROLE = "checksum"

RoleOf = Callable[[str, str], str]  # (message name, signal name) -> data | counter | checksum
ExplicitAlgorithm = Callable[[str, str], "str | None"]  # (message name, signal name) -> algorithm name or None
CounterModulus = Callable[[str, str], "int | None"]  # (message name, signal name) -> values before it wraps, or None


@dataclass(slots=True)
class MessageCounts:
    frames: int = 0
    checked: int = 0
    short: int = 0
    counter_ok: int = 0
    counter_jumps: int = 0
    counter_repeats: int = 0
    counter_resyncs: int = 0
    checksum_ok: int = 0
    checksum_failures: int = 0
    checksum_not_checked: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class MessageLayout:
    """The transport fields of one message: each counter with the number of values it runs through before it
    wraps to 0 (2**length unless told otherwise), each checksum with its algorithm (None: not checked)."""

    message: Message
    counters: tuple[tuple[Field, int], ...]
    checksums: tuple[tuple[Field, Algorithm | None], ...]

    @property
    def key(self) -> int:
        """The frame's arbitration id as the decoder keys it (extended ids flagged)."""
        return self.message.frame_id | (EXTENDED_FLAG if self.message.is_extended_frame else 0)

    @property
    def empty(self) -> bool:
        return not self.counters and not self.checksums


def layout_for(message: Message, counter_names: Iterable[str], checksum_names: Iterable[str],
               algorithm: str | Algorithm | Callable[[Field], Algorithm | None] | None = None,
               moduli: Mapping[str, int] | None = None) -> MessageLayout:
    """A message's layout.  ``algorithm``: a name or Algorithm for every checksum of the message, a callable
    choosing one per checksum field, or None (checksums not checked).  ``moduli``: counter (field or signal)
    name -> values before it wraps, for counters that wrap early (Hyundai's 4-bit counters running 0..14)."""
    checksums = []
    for field in group_fields(message, checksum_names):
        if callable(algorithm) and not isinstance(algorithm, Algorithm):
            chosen = algorithm(field)
        elif isinstance(algorithm, str):
            chosen = known(algorithm)
        else:
            chosen = algorithm
        if chosen is not None and not chosen.applies(message.frame_id, field):
            chosen = None  # a checksum in another width or place: not checked rather than failing every frame
        checksums.append((field, chosen))
    moduli = moduli or {}
    counters = []
    for field in group_fields(message, counter_names):
        given = [moduli[name] for name in (field.name, *field.signal_names) if name in moduli]
        modulus = given[0] if given else field.modulus
        if not 2 <= modulus <= field.modulus:
            raise ValueError(f"{message.name}.{field.name}: a {field.length}-bit counter cannot wrap after {modulus}")
        counters.append((field, modulus))
    return MessageLayout(message, tuple(counters), tuple(checksums))


def layouts_from_dbcs(bus_dbcs: Mapping[str, list[LoadedDbc]], role: RoleOf,
                      algorithm: ExplicitAlgorithm | None = None,
                      counter_modulus: CounterModulus | None = None) -> dict[tuple[str, int], MessageLayout]:
    """``(bus, frame id) -> layout`` for every message with a counter or checksum; bus ``"*"``: every bus.

    A checksum's algorithm: ``algorithm(message, signal)`` when it names one, else the DBC family's
    (``checksums.algorithm_for``), else None.  A counter wraps after 2**length values unless
    ``counter_modulus(message, signal)`` says otherwise."""
    layouts: dict[tuple[str, int], MessageLayout] = {}
    for bus, dbcs in bus_dbcs.items():
        for loaded in dbcs:
            for message in loaded.database.messages:
                roles = {signal.name: role(message.name, signal.name) for signal in message.signals}
                counters = [name for name, kind in roles.items() if kind == COUNTER_ROLE]
                checksums = [name for name, kind in roles.items() if kind == CHECKSUM_ROLE]
                if not counters and not checksums:
                    continue

                def choose(field: Field, message: Message = message, loaded: LoadedDbc = loaded) -> Algorithm | None:
                    explicit = next(filter(None, (algorithm(message.name, name) for name in field.signal_names)),
                                    None) if algorithm is not None else None
                    return algorithm_for(message.frame_id, field, loaded.path, explicit)

                moduli = {name: modulus for name in counters
                          if counter_modulus is not None and (modulus := counter_modulus(message.name, name))}
                layout = layout_for(message, counters, checksums, choose, moduli)
                layouts.setdefault((bus, message.frame_id), layout)  # the first DBC of a bus wins, as in decoding
    return layouts


class _Watch:
    """One message on one bus: its layout, its counts, and the state of its counters."""

    __slots__ = ("address", "checksums", "counters", "counts", "layout", "length")

    def __init__(self, layout: MessageLayout, gap_seconds: float, reset_seconds: float) -> None:
        self.layout = layout
        self.address = layout.message.frame_id
        self.length = layout.message.length
        self.counts = MessageCounts()
        self.counters = [(field, CounterTrack(modulus, gap_seconds, reset_seconds))
                         for field, modulus in layout.counters]
        self.checksums = [(field, algorithm.compute if algorithm else None) for field, algorithm in layout.checksums]

    def check(self, data: bytes, timestamp: float) -> None:
        counts = self.counts
        counts.frames += 1
        if len(data) < self.length:
            counts.short += 1
            return
        counts.checked += 1
        for field, track in self.counters:
            outcome = track.step(field.value(data), timestamp)
            if outcome == OK:
                counts.counter_ok += 1
            elif outcome == JUMP:
                counts.counter_jumps += 1
            elif outcome == REPEAT:
                counts.counter_repeats += 1
            else:
                counts.counter_resyncs += 1
        for field, compute in self.checksums:
            if compute is None:
                counts.checksum_not_checked += 1
            elif compute(self.address, data, field) == field.value(data):
                counts.checksum_ok += 1
            else:
                counts.checksum_failures += 1


LayoutInput = MessageLayout | tuple  # (Message, counter names, checksum names, algorithm or None)


def _same_checks(one: _Watch, other: _Watch) -> bool:
    def shape(watch: _Watch) -> tuple:
        layout = watch.layout
        return (layout.message.name, watch.length,
                tuple((field.name, modulus) for field, modulus in layout.counters),
                tuple((field.name, algorithm.name if algorithm else None) for field, algorithm in layout.checksums))
    return shape(one) == shape(other)


class TransportChecker:
    """Counts counter and checksum problems of raw frames, per bus and message.

    ``layouts``: ``(bus, frame id) -> MessageLayout`` or ``(cantools Message, counter signal names, checksum
    signal names, algorithm name or None)``; bus ``"*"`` applies to every bus (a bus's own entry wins)."""

    def __init__(self, layouts: Mapping[tuple[str, int], LayoutInput], gap_seconds: float = GAP_SECONDS,
                 reset_seconds: float = RESET_SECONDS) -> None:
        self.gap_seconds = gap_seconds
        self.reset_seconds = reset_seconds
        self._layouts: dict[str, dict[int, MessageLayout]] = {}
        for (bus, _frame_id), given in layouts.items():
            layout = given if isinstance(given, MessageLayout) else layout_for(*given)
            if not layout.empty:
                self._layouts.setdefault(bus, {})[layout.key] = layout
        self._tables: dict[str, dict[int, _Watch]] = {}

    @classmethod
    def from_dbcs(cls, bus_dbcs: Mapping[str, list[LoadedDbc]], role: RoleOf,
                  algorithm: ExplicitAlgorithm | None = None, counter_modulus: CounterModulus | None = None,
                  **options: float) -> TransportChecker:
        """From the DBCs per bus (as ``agent.decode.Decoder`` takes them) and a role per signal."""
        return cls(layouts_from_dbcs(bus_dbcs, role, algorithm, counter_modulus), **options)

    @property
    def empty(self) -> bool:
        """No message on any bus has a counter or checksum: ``on_raw`` never counts anything."""
        return not self._layouts

    def _build(self, bus: str) -> dict[int, _Watch]:
        merged = {**self._layouts.get(ALL_DBCS, {}), **self._layouts.get(bus, {})}
        table = self._tables[bus] = {key: _Watch(layout, self.gap_seconds, self.reset_seconds)
                                     for key, layout in merged.items()}
        return table

    def continue_from(self, previous: TransportChecker) -> None:
        """Go on from the checker a reload replaces: a message checked the same way (same counters and moduli,
        same checksums and algorithms, same length) keeps its counts and its counters' last values, so the
        reload neither resets the data-quality counters nor shows as a resync; a message whose checks changed
        starts afresh."""
        for bus, old_table in previous._tables.items():
            table = self._tables.get(bus) or self._build(bus)
            for key, old in old_table.items():
                watch = table.get(key)
                if watch is not None and _same_checks(watch, old):
                    watch.counts = old.counts
                    for (_field, track), (_old_field, old_track) in zip(watch.counters, old.counters):
                        track.previous, track.last_time = old_track.previous, old_track.last_time

    def on_raw(self, bus: str, msg: can.Message) -> None:
        table = self._tables.get(bus)
        if table is None:
            table = self._build(bus)
        frame_id = msg.arbitration_id
        watch = table.get(frame_id | EXTENDED_FLAG if msg.is_extended_id else frame_id)
        if watch is None or msg.is_error_frame or msg.is_remote_frame:
            return
        watch.check(bytes(msg.data), msg.timestamp)

    def snapshot(self) -> dict[str, dict[str, dict[str, int]]]:
        """``bus -> message name -> counts`` for every message seen; JSON-able."""
        result: dict[str, dict[str, dict[str, int]]] = {}
        for bus, table in sorted(self._tables.items()):
            seen = [watch for watch in table.values() if watch.counts.frames]
            names = [watch.layout.message.name for watch in seen]
            for watch in sorted(seen, key=lambda w: w.layout.message.name):
                name = watch.layout.message.name
                if names.count(name) > 1:  # two messages of one name (a DBC that repeats names): tell them apart
                    name = f"{name} (0x{watch.address:X})"
                result.setdefault(bus, {})[name] = watch.counts.as_dict()
        return result

    def total(self) -> dict[str, int]:
        """Every count summed over buses and messages."""
        total = MessageCounts().as_dict()
        for table in self._tables.values():
            for watch in table.values():
                for name, value in watch.counts.as_dict().items():
                    total[name] += value
        return total

    def describe(self) -> dict[str, dict[str, dict[str, object]]]:
        """``bus -> message -> {"counters": {field: modulus}, "checksums": {field: algorithm or None}}``, for
        logs and listings; bus ``"*"`` for layouts that apply to every bus."""
        return {bus: {layout.message.name: {
                    "counters": {field.name: modulus for field, modulus in layout.counters},
                    "checksums": {field.name: algorithm.name if algorithm else None
                                  for field, algorithm in layout.checksums}}
                      for layout in sorted(table.values(), key=lambda lay: lay.message.name)}
                for bus, table in sorted(self._layouts.items())}
