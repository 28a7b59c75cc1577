"""Fault injection for replayed CAN traffic: ``vehicle-sim replay ... --faults SPEC``.

``FaultInjector`` transforms a stream of ``(bus, can.Message)`` as a
``FaultSpec`` (``simulator.fault_spec``) says, and counts every fault it
injects in a ``FaultReport``, so a test can check that the agent's counters
show each one.  The same seed gives the same faults.

Per-frame faults (drop, corrupt, dup, reorder, delay, checksum, counter) are
exclusive: one draw per frame picks at most one, so their probabilities must
add up to <= 1.  ``checksum`` and ``counter`` need the messages' layouts
(``TransportFaults``, from DBCs): a drawn frame of a message without a known
checksum (or without a counter, or the first frame of its message) goes out
unchanged and is not counted.  A counter fault shifts that message's counters
by one from the drawn frame on (and fixes up its checksums where they were
right), so the receiver sees exactly one counter jump per fault and counter,
and no repeat: a one-frame change would be followed by a repeat or a second
jump when the next original frame comes.
Timed faults (errburst, silence, jump) happen at a log time measured from the
first frame, on the original timestamps; a logger clock reset (time stepping
back by more than 1 s) does not restart that count.  Input messages are never
modified: a changed frame is a copy.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields

import can

from agent.decode import ALL_DBCS, EXTENDED_FLAG
from agent.integrity.checker import MessageLayout
from simulator.fault_spec import (
    FAULTS_HELP,
    PER_FRAME,
    FaultSpec,
    FaultSpecError,
    TimedFault,
    parse_fault_spec,
)

__all__ = ["FAULTS_HELP", "FaultInjector", "FaultReport", "FaultSpec", "FaultSpecError", "TimedFault",
           "TransportFaults", "inject_faults", "parse_fault_spec"]

RESET_THRESHOLD = 1.0  # seconds a timestamp may step back before it counts as a clock reset
_ERROR_CLASS = 0x088  # SocketCAN CAN_ERR_PROT | CAN_ERR_BUSERROR: a protocol violation seen on the bus


@dataclass
class FaultReport:
    """What was injected.  frames_out = frames_in - dropped - silenced + duplicated + error_frames."""

    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    corrupted_bits: int = 0
    corrupted_length: int = 0
    duplicated: int = 0
    reordered: int = 0  # frames that went out after at least one later frame
    delayed: int = 0
    error_frames: int = 0
    error_bursts: int = 0
    silenced: int = 0  # frames lost to silences
    silences: int = 0  # silence windows begun
    clock_jumps: int = 0
    jumped_frames: int = 0  # frames sent with a shifted timestamp (error frames and copies included)
    checksum_corrupted: int = 0  # frames sent with a wrong checksum (checksum=P)
    counter_skipped: int = 0  # frames from which a message's counters run one further ahead (counter=P)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def summary(self) -> str:
        faults = {k: v for k, v in self.as_dict().items() if v and k not in ("frames_in", "frames_out")}
        return "faults: " + (", ".join(f"{k} {v}" for k, v in faults.items()) or "none injected")


@dataclass
class _Held:
    bus: str
    msg: can.Message
    pace: float
    release: float  # reorder: frames still to go out before it; delay: log position
    overtaken: bool = False  # reorder: a later frame went out first


@dataclass
class _Schedule:
    """The next times of one timed fault."""

    fault: TimedFault
    times: Iterator[float] = field(init=False)
    next: float | None = field(init=False)

    def __post_init__(self) -> None:
        self.times = self.fault.times()
        self.next = next(self.times)

    def due(self, position: float) -> bool:
        return self.next is not None and self.next <= position

    def advance(self) -> None:
        self.next = next(self.times, None)


class FaultInjector:
    """Applies a FaultSpec to a frame stream; counts go to ``self.report``.  One injector per stream."""

    def __init__(self, spec: FaultSpec, report: FaultReport | None = None,
                 transport: TransportFaults | None = None) -> None:
        if (spec.checksum or spec.counter) and transport is None:
            raise FaultSpecError("checksum= and counter= faults need the messages' DBCs (--dbc)")
        self.spec = spec
        self.report = report if report is not None else FaultReport()
        self.transport = transport
        self._rng = random.Random(spec.seed)
        self._draws = any(getattr(spec, kind) for kind in PER_FRAME)
        self._bursts = [_Schedule(f) for f in spec.error_bursts]
        self._jumps = [_Schedule(f) for f in spec.jumps]
        self._silences = [_Schedule(f) for f in spec.silences]
        self._silent_until: float | None = None
        self._offset = 0.0
        self._position = 0.0
        self._newest: float | None = None
        self._reordered: list[_Held] = []
        self._delayed: list[_Held] = []

    def apply(self, frames: Iterable[tuple[str, can.Message]]) -> Iterator[tuple[str, can.Message]]:
        for bus, msg, _pace in self.paced(frames):
            yield bus, msg

    def paced(self, frames: Iterable[tuple[str, can.Message]]) -> Iterator[tuple[str, can.Message, float]]:
        """Yields ``(bus, msg, pace_at)``: ``pace_at`` is the original log time at which a paced replay
        should send the frame, so a clock jump in ``msg.timestamp`` does not make the replay sleep."""
        for bus, msg in frames:
            yield from self._one(bus, msg)
        for held in self._reordered + self._delayed:  # end of stream: nothing left to wait for
            if held in self._reordered and held.overtaken:
                self.report.reordered += 1
            yield from self._out(held.bus, held.msg, held.pace, fresh=False)
        self._reordered.clear()
        self._delayed.clear()

    # -- one input frame ----------------------------------------------------------------------
    def _one(self, bus: str, msg: can.Message) -> Iterator[tuple[str, can.Message, float]]:
        report = self.report
        report.frames_in += 1
        ts = msg.timestamp
        self._advance(ts)
        position = self._position
        while self._delayed and self._delayed[0].release <= position:
            held = self._delayed.pop(0)
            yield from self._out(held.bus, held.msg, held.pace, fresh=False)
        for schedule in self._jumps:
            while schedule.due(position):
                self._offset += schedule.fault.amount
                report.clock_jumps += 1
                schedule.advance()
        for schedule in self._bursts:
            while schedule.due(position):
                report.error_bursts += 1
                for _ in range(int(schedule.fault.amount)):
                    report.error_frames += 1
                    error = can.Message(timestamp=ts + self._offset, arbitration_id=_ERROR_CLASS,
                                        is_error_frame=True, is_extended_id=False, dlc=8, data=bytes(8),
                                        channel=msg.channel)
                    yield from self._out(bus, error, ts)
                schedule.advance()
        if self._silenced(position):
            report.silenced += 1
            return
        if self._offset:
            msg = _changed(msg, timestamp=ts + self._offset)
        yield from self._faulted(bus, msg, ts, position)

    def _faulted(self, bus: str, msg: can.Message, ts: float,
                 position: float) -> Iterator[tuple[str, can.Message, float]]:
        spec, report = self.spec, self.report
        if self.transport is not None:
            msg = self.transport.carry(bus, msg)
        draw = self._rng.random() if self._draws else 1.0
        if draw < (edge := spec.drop):
            report.dropped += 1
            return
        if draw < (edge := edge + spec.corrupt):
            msg = self._corrupt(msg)
        elif draw < (edge := edge + spec.dup):
            report.duplicated += 1
            twin = _changed(msg)  # copied first: a consumer may restamp the frame it was given
            yield from self._out(bus, msg, ts)
            msg = twin
        elif draw < (edge := edge + spec.reorder):
            self._reordered.append(_Held(bus, msg, ts, release=spec.reorder_depth))
            return
        elif draw < (edge := edge + spec.delay):
            report.delayed += 1
            late = _changed(msg, timestamp=msg.timestamp + spec.delay_seconds)
            self._delayed.append(_Held(bus, late, ts + spec.delay_seconds, release=position + spec.delay_seconds))
            return
        elif draw < (edge := edge + spec.checksum):
            assert self.transport is not None
            changed = self.transport.corrupt_checksum(bus, msg, self._rng)
            if changed is not None:
                report.checksum_corrupted += 1
                msg = changed
        elif draw < edge + spec.counter:
            assert self.transport is not None
            changed = self.transport.skip_counter(bus, msg)
            if changed is not None:
                report.counter_skipped += 1
                msg = changed
        yield from self._out(bus, msg, ts)

    def _out(self, bus: str, msg: can.Message, pace: float,
             fresh: bool = True) -> Iterator[tuple[str, can.Message, float]]:
        self.report.frames_out += 1
        if msg.timestamp != pace:  # pace is the unshifted log time (plus any delay)
            self.report.jumped_frames += 1
        yield bus, msg, pace
        if not fresh:
            return  # a released frame does not count towards another's reorder depth
        due = []
        for held in self._reordered:
            held.overtaken = True
            held.release -= 1
            if held.release <= 0:
                due.append(held)
        for held in due:
            self._reordered.remove(held)
            self.report.reordered += 1
            yield from self._out(held.bus, held.msg, held.pace, fresh=False)

    # -- helpers --------------------------------------------------------------------------------
    def _advance(self, ts: float) -> None:
        """Log position: forward steps of the timestamps add up; a step back (interleaved buses, clock reset)
        adds nothing."""
        if self._newest is None:
            self._newest = ts
        elif ts > self._newest:
            self._position += ts - self._newest
            self._newest = ts
        elif self._newest - ts > RESET_THRESHOLD:
            self._newest = ts

    def _silenced(self, position: float) -> bool:
        for schedule in self._silences:
            while schedule.due(position):
                start = schedule.next
                assert start is not None
                self.report.silences += 1
                end = start + schedule.fault.amount
                self._silent_until = end if self._silent_until is None else max(self._silent_until, end)
                schedule.advance()
        if self._silent_until is not None and position < self._silent_until:
            return True
        self._silent_until = None
        return False

    def _corrupt(self, msg: can.Message) -> can.Message:
        data = bytearray(msg.data)
        if not data or msg.is_error_frame or msg.is_remote_frame:
            return msg  # nothing to corrupt: sent unchanged, not counted
        mode = self.spec.corrupt_mode
        if mode == "any":
            mode = self._rng.choice(("bits", "length"))
        if mode == "length":
            self.report.corrupted_length += 1
            short = bytes(data[: self._rng.randrange(len(data))])
            return _changed(msg, data=short, dlc=len(short))
        self.report.corrupted_bits += 1
        for bit in self._rng.sample(range(len(data) * 8), min(len(data) * 8, self._rng.randint(1, 3))):
            data[bit // 8] ^= 1 << (bit % 8)
        return _changed(msg, data=data)


class _Stream:
    """One message on one bus as the injector sends it: frames so far, and how far its counters run ahead."""

    __slots__ = ("frames", "layout", "offset")

    def __init__(self, layout: MessageLayout) -> None:
        self.layout = layout
        self.frames = 0
        self.offset = 0


class TransportFaults:
    """Checksum and counter faults, for the messages whose layouts it is given (``(bus, frame id) -> layout``,
    as ``agent.integrity.checker.layouts_from_dbcs`` makes them; bus ``"*"``: every bus).

    ``injected`` counts per ``(bus, message name)``: ``checksum`` (frames with a wrong checksum) and
    ``counter`` (frames from which the counters run one further ahead)."""

    def __init__(self, layouts: Mapping[tuple[str, int], MessageLayout]) -> None:
        self._layouts: dict[str, dict[int, MessageLayout]] = {}
        for (bus, _frame_id), layout in layouts.items():
            self._layouts.setdefault(bus, {})[layout.key] = layout
        self._streams: dict[str, dict[int, _Stream]] = {}
        self.injected: dict[tuple[str, str], dict[str, int]] = {}

    def _stream(self, bus: str, msg: can.Message) -> _Stream | None:
        streams = self._streams.get(bus)
        if streams is None:
            merged = {**self._layouts.get(ALL_DBCS, {}), **self._layouts.get(bus, {})}
            streams = self._streams[bus] = {key: _Stream(layout) for key, layout in merged.items()}
        if msg.is_error_frame or msg.is_remote_frame:
            return None
        stream = streams.get(msg.arbitration_id | EXTENDED_FLAG if msg.is_extended_id else msg.arbitration_id)
        if stream is None or len(msg.data) < stream.layout.message.length:
            return None
        return stream

    def _count(self, bus: str, stream: _Stream, kind: str) -> None:
        counts = self.injected.setdefault((bus, stream.layout.message.name), {"checksum": 0, "counter": 0})
        counts[kind] += 1

    def carry(self, bus: str, msg: can.Message) -> can.Message:
        """``msg`` with its message's counters shifted by the counter faults so far (a copy if changed)."""
        stream = self._stream(bus, msg)
        if stream is None:
            return msg
        stream.frames += 1
        if not stream.offset:
            return msg
        return _changed(msg, data=self._shifted(stream, bytes(msg.data), stream.offset))

    def skip_counter(self, bus: str, msg: can.Message) -> can.Message | None:
        """``msg`` (already carried) with its counters one further ahead from now on; None: no counter, or the
        message's first frame (a receiver starts counting there, so a skip would not show)."""
        stream = self._stream(bus, msg)
        if stream is None or not stream.layout.counters or stream.frames < 2:
            return None
        stream.offset += 1
        self._count(bus, stream, "counter")
        return _changed(msg, data=self._shifted(stream, bytes(msg.data), 1))

    def corrupt_checksum(self, bus: str, msg: can.Message, rng: random.Random) -> can.Message | None:
        """``msg`` with a wrong value in its first checksum whose algorithm is known; None: there is none."""
        stream = self._stream(bus, msg)
        known = [(f, a) for f, a in stream.layout.checksums if a is not None] if stream is not None else []
        if stream is None or not known:
            return None
        checksum, algorithm = known[0]
        data = bytes(msg.data)
        right = algorithm.compute(stream.layout.message.frame_id, data, checksum)
        self._count(bus, stream, "checksum")
        return _changed(msg, data=checksum.with_value(data, right + rng.randrange(1, checksum.modulus)))

    @staticmethod
    def _shifted(stream: _Stream, data: bytes, by: int) -> bytes:
        layout = stream.layout
        address = layout.message.frame_id
        right = [algorithm is not None and algorithm.compute(address, data, checksum) == checksum.value(data)
                 for checksum, algorithm in layout.checksums]
        for counter, modulus in layout.counters:
            data = counter.with_value(data, (counter.value(data) + by) % modulus)
        for (checksum, algorithm), was_right in zip(layout.checksums, right):
            if was_right:  # a checksum that was wrong stays wrong: the fault adds no checksum failure of its own
                assert algorithm is not None
                data = checksum.with_value(data, algorithm.compute(address, data, checksum))
        return data


def _changed(msg: can.Message, **changes: object) -> can.Message:
    """A copy of ``msg`` with ``changes``: the input stream's messages are never modified in place."""
    clone = copy.copy(msg)
    clone.data = bytearray(msg.data)  # copy.copy shares the data buffer
    for name, value in changes.items():
        setattr(clone, name, bytearray(value) if name == "data" else value)
    return clone


def inject_faults(frames: Iterable[tuple[str, can.Message]], spec: FaultSpec | str,
                  report: FaultReport | None = None,
                  transport: TransportFaults | None = None) -> Iterator[tuple[str, can.Message]]:
    """Convenience: ``frames`` with ``spec`` (a FaultSpec or SPEC text) applied; counts go to ``report``."""
    injector = FaultInjector(parse_fault_spec(spec) if isinstance(spec, str) else spec, report, transport)
    return injector.apply(frames)
