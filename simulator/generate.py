"""Synthetic CAN traffic from a DBC: every message at its cycle time, plausible values.

Each message is sent every ``GenMsgCycleTime`` ms (cantools' ``cycle_time``;
100 ms when absent), divided by ``rate_scale``, starting at a random phase so
messages do not all coincide.  Values move smoothly (a slow sine plus a
bounded random walk) inside the signal's DBC minimum/maximum, which are also
clipped to what the signal's bits can hold; signals with a value table or only
a few possible values behave like states that change now and then.
Multiplexed messages cycle through their multiplexer values.  Frames are
encoded with cantools ``Message.encode`` (raw values, strict range checks) and
the same seed always gives the same frames.
"""

from __future__ import annotations

import heapq
import logging
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import can
from cantools.database.can import Message, Signal
from cantools.database.errors import EncodeError

from agent.dbc import load_dbc

log = logging.getLogger(__name__)

DEFAULT_CYCLE_MS = 100
DEFAULT_START_TIME = 1_700_000_000.0  # a fixed epoch keeps output reproducible
FLOAT_SPAN = 1000.0  # range used for IEEE-float signals without min/max
STATE_VALUES = 16  # signals with at most this many raw values behave like states


def signal_fits(signal: Signal, length: int) -> bool:
    """Whether the signal's bits lie inside a ``length``-byte payload (non-strict DBCs break this)."""
    # Motorola: ``start`` is the MSB in sawtooth numbering; count in network order.
    first = signal.start if signal.byte_order == "little_endian" else 8 * (signal.start // 8) + 7 - signal.start % 8
    return first >= 0 and first + signal.length <= 8 * length


def _representable(signal: Signal) -> tuple[int, int]:
    if signal.is_signed:
        return -(1 << (signal.length - 1)), (1 << (signal.length - 1)) - 1
    return 0, (1 << signal.length) - 1


def _distance_to_range(signal: Signal, raw: float) -> float:
    physical = raw * signal.scale + signal.offset
    below = signal.minimum - physical if signal.minimum is not None else 0.0
    above = physical - signal.maximum if signal.maximum is not None else 0.0
    return max(below, above, 0.0)


def raw_bounds(signal: Signal) -> tuple[float, float, bool]:
    """Raw values whose physical value lies within the DBC min/max and the bits, and
    whether there are any (if not, the whole raw range and False)."""
    if signal.is_float:
        lo_phys = signal.minimum if signal.minimum is not None else -FLOAT_SPAN
        hi_phys = signal.maximum if signal.maximum is not None else FLOAT_SPAN
        if signal.length == 32:  # keep inside float32
            lo_phys, hi_phys = max(lo_phys, -3.0e38), min(hi_phys, 3.0e38)
        scale, offset = signal.scale or 1.0, signal.offset
        ends = sorted(((lo_phys - offset) / scale, (hi_phys - offset) / scale))
        return ends[0], ends[1], True
    rep_lo, rep_hi = _representable(signal)
    lo, hi = rep_lo, rep_hi
    scale, offset = signal.scale or 1, signal.offset
    limits = []
    for physical in (signal.minimum, signal.maximum):
        limits.append(None if physical is None else (physical - offset) / scale)
    if scale < 0:
        limits.reverse()
    if limits[0] is not None:
        lo = max(lo, math.ceil(limits[0] - 1e-9))
    if limits[1] is not None:
        hi = min(hi, math.floor(limits[1] + 1e-9))
    if lo > hi:  # min/max outside what the bits can hold
        return rep_lo, rep_hi, False
    return lo, hi, True


class SignalWave:
    """Raw values of one signal over time."""

    def __init__(self, signal: Signal, rng: random.Random, cycle: float) -> None:
        self.rng = rng
        self.is_float = bool(signal.is_float)
        self.lo, self.hi, self.in_range = raw_bounds(signal)
        if not self.in_range:  # hold the raw value nearest the DBC range
            self.lo = self.hi = min((self.lo, self.hi), key=lambda raw: _distance_to_range(signal, raw))
        choices = sorted(int(k) for k in (signal.choices or {}) if self.lo <= int(k) <= self.hi)
        span = self.hi - self.lo
        self.states: list[int] | None = None
        if choices:
            self.states = choices
        elif not self.is_float and span < STATE_VALUES:
            self.states = list(range(int(self.lo), int(self.hi) + 1))
        self.period = rng.uniform(10.0, 120.0)
        self.phase = rng.uniform(0.0, 2 * math.pi)
        self.walk = 0.0
        self.switch_probability = min(1.0, cycle / rng.uniform(2.0, 10.0))  # a state lasts 2-10 s
        self.state = rng.choice(self.states) if self.states else 0

    def value(self, t: float) -> int | float:
        if self.states is not None:
            if self.rng.random() < self.switch_probability:
                self.state = self.rng.choice(self.states)
            return self.state
        self.walk = max(-0.1, min(0.1, self.walk + self.rng.gauss(0.0, 0.01)))
        position = 0.5 + 0.35 * math.sin(2 * math.pi * t / self.period + self.phase) + self.walk
        position = max(0.02, min(0.98, position)) if self.is_float else max(0.0, min(1.0, position))
        raw = self.lo + position * (self.hi - self.lo)
        if self.is_float:
            return raw
        return int(max(self.lo, min(self.hi, round(raw))))


class UnusableMessage(ValueError):
    """A DBC message that cannot be generated (the reason is logged as a warning)."""


def signal_bit_set(signal: Signal) -> frozenset[int]:
    """The payload bits of a signal, numbered as in little-endian (byte * 8 + bit)."""
    if signal.byte_order == "little_endian":
        return frozenset(range(signal.start, signal.start + signal.length))
    first = 8 * (signal.start // 8) + 7 - signal.start % 8  # network order, 0 = MSB of byte 0
    return frozenset(8 * (k // 8) + 7 - k % 8 for k in range(first, first + signal.length))


class MessageSource:
    """Frames of one DBC message; multiplexer values rotate from frame to frame.

    Real DBCs loaded non-strictly may overlap signals, which cantools cannot
    encode; the later of two overlapping signals is left out of the encoding
    (it then decodes from the other signal's bits).
    """

    def __init__(self, message: Message, rng: random.Random, rate_scale: float, channel: str) -> None:
        if message.is_container:
            raise UnusableMessage(f"message {message.name}: container messages are not generated")
        outside = [s.name for s in message.signals if not signal_fits(s, message.length)]
        if outside:
            raise UnusableMessage(f"message {message.name}: not generated, signals outside its "
                                  f"{message.length} bytes: {', '.join(outside)}")
        self.message = message
        cycle_ms = message.cycle_time or DEFAULT_CYCLE_MS
        self.period = cycle_ms / 1000.0 / rate_scale
        self.first = rng.uniform(0.0, self.period)
        self.channel = channel
        shadowed = overlapped_signals(message)
        if shadowed:
            log.warning("message %s: signals overlapping earlier ones are not set: %s", message.name,
                        ", ".join(shadowed))
            message = Message(frame_id=message.frame_id, name=message.name, length=message.length,
                              signals=[s for s in message.signals if s.name not in shadowed],
                              is_extended_frame=message.is_extended_frame, is_fd=message.is_fd, strict=False)
        self.codec = message
        self.waves = {s.name: SignalWave(s, rng, self.period) for s in message.signals if not s.is_multiplexer}
        for name, wave in self.waves.items():
            if not wave.in_range:
                signal = message.get_signal_by_name(name)
                log.warning("signal %s.%s: DBC range [%s, %s] unreachable with its bits; held at the nearest value",
                            message.name, name, signal.minimum, signal.maximum)
        self.mux_values: dict[str, list[int]] = {}
        for signal in message.signals:
            if signal.is_multiplexer:
                lo, hi = _representable(signal)
                self.mux_values[signal.name] = sorted(v for v in signal_mux_ids(message, signal.name) if lo <= v <= hi)
                if not self.mux_values[signal.name]:
                    raise UnusableMessage(f"message {message.name}: no multiplexer value of {signal.name} fits "
                                          f"its {signal.length} bits")
        self.mux_turn: dict[str, int] = {}
        # Strict range checks, unless a DBC range cannot be reached by its signal's bits.
        self.strict = all(wave.in_range for wave in self.waves.values())

    def _select(self, tree: list[Any], data: dict[str, int | float], t: float) -> None:
        for node in tree:
            if isinstance(node, str):
                data[node] = self.waves[node].value(t)
                continue
            for mux_name, branches in node.items():
                values = self.mux_values[mux_name]
                turn = self.mux_turn.get(mux_name, 0)
                self.mux_turn[mux_name] = turn + 1
                chosen = values[turn % len(values)]
                data[mux_name] = chosen
                self._select(branches[chosen], data, t)

    def frame(self, t: float, timestamp: float) -> can.Message:
        message = self.codec
        data: dict[str, int | float] = {}
        self._select(message.signal_tree, data, t)
        payload = message.encode(data, scaling=False, padding=False, strict=self.strict) if data else bytes(
            message.length)
        return can.Message(timestamp=timestamp, arbitration_id=message.frame_id,
                           is_extended_id=message.is_extended_frame, is_fd=message.is_fd,
                           data=payload, channel=self.channel)


def overlapped_signals(message: Message) -> list[str]:
    """Signals whose bits overlap an earlier signal that can be active in the same frame."""
    kept: list[tuple[frozenset[int], dict[str, set[int]]]] = []
    shadowed = []
    for signal in message.signals:
        bits, path = signal_bit_set(signal), _mux_path(message, signal)
        if any(bits & other_bits and _coexist(path, other_path) for other_bits, other_path in kept):
            shadowed.append(signal.name)
        else:
            kept.append((bits, path))
    return shadowed


def _mux_path(message: Message, signal: Signal) -> dict[str, set[int]]:
    """Multiplexer -> values that must hold for ``signal`` to be in a frame (nested muxes included)."""
    by_name = {s.name: s for s in message.signals}
    path: dict[str, set[int]] = {}
    current: Signal | None = signal
    while current is not None and current.multiplexer_signal is not None and current.multiplexer_ids is not None:
        path[current.multiplexer_signal] = set(current.multiplexer_ids)
        # cantools may keep the short name here when the DBC gives a long one (SystemSignalLongSymbol).
        current = by_name.get(current.multiplexer_signal)
    return path


def _coexist(a: dict[str, set[int]], b: dict[str, set[int]]) -> bool:
    """Two signals can share a frame unless one multiplexer would need different values for them."""
    return all(a[mux] & b[mux] for mux in a.keys() & b.keys())


def signal_mux_ids(message: Message, mux_name: str) -> list[int]:
    """The multiplexer values of ``mux_name`` that select a branch in the signal tree."""
    def walk(tree: list[Any]) -> list[int]:
        for node in tree:
            if isinstance(node, dict):
                for name, branches in node.items():
                    if name == mux_name:
                        return list(branches)
                    for branch in branches.values():
                        found = walk(branch)
                        if found:
                            return found
        return []

    return walk(message.signal_tree)


@dataclass
class GenerateOptions:
    duration: float = 60.0
    rate_scale: float = 1.0
    seed: int = 0
    channel: str = "can0"
    start_time: float = DEFAULT_START_TIME

    def validate(self) -> None:
        if not self.duration > 0:
            raise ValueError(f"--duration must be > 0, got {self.duration}")
        if not self.rate_scale > 0:
            raise ValueError(f"--rate-scale must be > 0, got {self.rate_scale}")


def message_sources(messages: list[Message], options: GenerateOptions) -> list[MessageSource]:
    """One source per usable message; the others are named in a warning."""
    master = random.Random(options.seed)
    sources = []
    for message in messages:
        # Drawn for every message, usable or not, so one bad message does not reshuffle the rest.
        rng = random.Random(master.getrandbits(64))
        try:
            sources.append(MessageSource(message, rng, options.rate_scale, options.channel))
        except UnusableMessage as exc:
            log.warning("%s", exc)
    return sources


def generate_frames(messages: list[Message], options: GenerateOptions) -> Iterator[can.Message]:
    """All frames of ``messages`` in time order over ``options.duration`` seconds."""
    options.validate()
    sources = message_sources(messages, options)
    # (time, index, count): the index keeps ties in DBC order, so output is stable.
    heap = [(s.first, i, 0) for i, s in enumerate(sources)]
    heapq.heapify(heap)
    while heap:
        t, index, count = heapq.heappop(heap)
        if t >= options.duration:
            continue
        source = sources[index]
        try:
            frame = source.frame(t, options.start_time + t)
        except (EncodeError, OverflowError, ValueError) as exc:
            log.warning("message %s: not generated further, cantools cannot encode it: %s", source.message.name, exc)
            continue
        yield frame
        heapq.heappush(heap, (source.first + (count + 1) * source.period, index, count + 1))


def write_log(dbc_paths: list[str | Path], output: str | Path, options: GenerateOptions) -> dict[str, int]:
    """Generate from the DBCs into ``output`` (format by suffix); returns frames per message."""
    options.validate()
    messages = [m for path in dbc_paths for m in load_dbc(path).database.messages]
    if not messages:
        raise ValueError(f"{', '.join(map(str, dbc_paths))}: no messages to generate")
    counts: dict[str, int] = {}
    try:
        writer = can.Logger(str(output))
    except ValueError as exc:  # unknown suffix
        raise ValueError(f"{output}: {exc}") from None
    names = {(m.frame_id, m.is_extended_frame): m.name for m in messages}
    try:
        for msg in generate_frames(messages, options):
            writer.on_message_received(msg)
            name = names[(msg.arbitration_id, msg.is_extended_id)]
            counts[name] = counts.get(name, 0) + 1
    finally:
        writer.stop()
    return counts
