"""Per-signal samplers: what one collection rule emits for the frames of one message on one bus.

One sampler instance exists per (campaign rule, bus, message), so state such
as an open period never mixes buses.  Samplers are fed whole frames (one call
per frame, not per signal) and emit at most one ``Row`` per frame or period.

Time is the frame timestamp (data time), so a replay at full speed emits the
same rows as the drive did.  Timestamps may step backwards (buses interleaved
by a logger, a logger clock reset).  A step back of up to ``clock_reset_s``
is treated as a late frame: it counts in the open period, and rate limits
measure from the newest time seen.  A longer step back is a clock reset: the
open period is emitted and every sampler starts afresh from the new time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agent.model import UNCLASSIFIED, DecodedFrame, Row, SignalSpec

Put = Callable[[Row], None]


@dataclass(frozen=True, slots=True)
class Selection:
    """The signals of one message that one rule takes (in DBC order)."""

    message: str
    specs: tuple[SignalSpec, ...]
    # True when the rule takes every signal of the message: rows copy frame.raw whole.
    whole_message: bool
    categories: frozenset[str]
    category_of: dict[str, str]

    @classmethod
    def of(cls, message: str, chosen: Iterable[SignalSpec], all_signals: int) -> Selection:
        specs = tuple(chosen)
        return cls(message, specs, len(specs) == all_signals, frozenset(s.category for s in specs),
                   {s.signal: s.category for s in specs})

    def values(self, raw: dict[str, int | float]) -> dict[str, int | float]:
        if self.whole_message:
            return dict(raw)  # a copy: frame.raw may be shared with the decoder's cache
        return {spec.signal: raw[spec.signal] for spec in self.specs if spec.signal in raw}

    def categories_of(self, values: dict[str, int | float]) -> frozenset[str]:
        if len(values) == len(self.specs):
            return self.categories
        category_of = self.category_of
        return frozenset(category_of.get(name, UNCLASSIFIED) for name in values)


class FullRate:
    """Every frame, the selected signals as they are (raw values)."""

    def __init__(self, selection: Selection, stream: str, priority: int, put: Put) -> None:
        self.selection = selection
        self.stream = stream
        self.priority = priority
        self.put = put
        self._signals = len(selection.specs)

    def on_frame(self, frame: DecodedFrame) -> None:
        selection = self.selection
        raw = frame.raw
        if selection.whole_message:  # most rows: Selection.values and categories_of without the two calls
            if not raw:
                return
            values = dict(raw)  # a copy: frame.raw may be shared with the decoder's cache
            categories = selection.categories if len(values) == self._signals else selection.categories_of(values)
        else:
            values = selection.values(raw)
            if not values:
                return
            categories = selection.categories_of(values)
        self.put(Row(self.stream, self.priority, frame.timestamp, frame.bus, frame.message, values, True,
                     categories))

    def flush(self) -> None:
        """Nothing is held back."""


class ChangeSampler:
    """``on_change`` (with an absolute or relative deadband) and/or ``max_rate_hz``, per signal.

    A sample is emitted when (a) it is the signal's first, or its physical value
    differs from the last *emitted* value by more than the deadband (any
    difference when the deadband is 0; relative: more than ``rel * |last|``),
    and (b) at least ``1 / max_rate_hz`` seconds passed since the signal was
    last emitted.  A change hidden by the rate limit is emitted with the first
    sample after the gap that still differs.  Rows hold raw values.
    """

    def __init__(self, selection: Selection, stream: str, priority: int, put: Put, *, on_change: bool,
                 deadband_abs: float = 0.0, deadband_rel: float | None = None, max_rate_hz: float | None = None,
                 clock_reset_s: float = 1.0) -> None:
        self.selection = selection
        self.stream = stream
        self.priority = priority
        self.put = put
        self.on_change = on_change
        self.deadband_abs = deadband_abs
        self.deadband_rel = deadband_rel
        self.min_gap_s = 1.0 / max_rate_hz if max_rate_hz else 0.0
        self.clock_reset_s = clock_reset_s
        self._signals = tuple((spec.signal, spec) for spec in selection.specs)
        self._emitted_at: dict[str, float] = {}
        self._emitted_value: dict[str, float] = {}
        self._clock: float | None = None

    def _changed(self, last: float, value: float) -> bool:
        if last != last or value != value:  # NaN: a change only when NaN-ness changes
            return (last != last) != (value != value)
        if self.deadband_rel is not None:
            return abs(value - last) > self.deadband_rel * abs(last)
        return abs(value - last) > self.deadband_abs

    def on_frame(self, frame: DecodedFrame) -> None:
        t = frame.timestamp
        clock = self._clock
        if clock is None or t > clock:
            self._clock = t
        elif t < clock - self.clock_reset_s:
            self._clock = t
            self._emitted_at.clear()
            self._emitted_value.clear()
        raw = frame.raw
        gap = self.min_gap_s
        emitted_at = self._emitted_at
        values: dict[str, int | float] | None = None
        for name, spec in self._signals:
            value = raw.get(name)
            if value is None:
                continue
            if gap:
                last_time = emitted_at.get(name)
                if last_time is not None and t - last_time < gap:
                    continue
            if self.on_change:
                physical = spec.to_physical(value)
                last = self._emitted_value.get(name)
                if last is not None and not self._changed(last, physical):
                    continue
                self._emitted_value[name] = physical
            emitted_at[name] = t
            if values is None:
                values = {}
            values[name] = value
        if values:
            self.put(Row(self.stream, self.priority, t, frame.bus, frame.message, values, True,
                         self.selection.categories_of(values)))

    def flush(self) -> None:
        """Nothing is held back."""


class PeriodSampler:
    """One row per period: the last raw values, or min/max/mean of the physical values.

    Periods are aligned to multiples of the period in data time:
    ``[k * period, (k + 1) * period)``; a frame exactly on a boundary opens the
    next period.  A period is emitted when a frame of a later period arrives (or
    on ``flush``).  ``last`` rows carry the raw values of the period's last frame
    (per signal, so multiplexed signals keep their own last value) stamped with
    that frame's time; aggregate rows carry physical values stamped with the
    period start.  Periods without samples emit nothing.
    """

    def __init__(self, selection: Selection, stream: str, priority: int, put: Put, *, period_ms: float,
                 aggregate: str = "last", clock_reset_s: float = 1.0) -> None:
        if aggregate not in ("last", "min", "max", "mean"):
            raise ValueError(f"unknown aggregate {aggregate!r}")
        self.selection = selection
        self.stream = stream
        self.priority = priority
        self.put = put
        self.period_ms = period_ms
        self.period_s = period_ms / 1000
        self.aggregate = aggregate
        self.clock_reset_s = clock_reset_s
        self._signals = tuple((spec.signal, spec) for spec in selection.specs)
        self._period: int | None = None
        self._bus = ""
        self._last_time = 0.0
        self._last_values: dict[str, int | float] = {}
        # per signal [min, max, sum, count] of physical values
        self._stats: dict[str, list[float]] = {}

    def on_frame(self, frame: DecodedFrame) -> None:
        t = frame.timestamp
        try:
            period = math.floor(t / self.period_s)
        except (OverflowError, ValueError):  # an infinite or NaN timestamp belongs to no period
            return
        current = self._period
        if current is None:
            self._period = period
        elif period != current and (period > current or t < current * self.period_s - self.clock_reset_s):
            self._emit()
            self._period = period
        # else: the same period, or a late frame (small step back) counted in the open period
        self._bus = frame.bus
        self._last_time = t
        raw = frame.raw
        if self.aggregate == "last":
            last_values = self._last_values
            for name, _spec in self._signals:
                value = raw.get(name)
                if value is not None:
                    last_values[name] = value
            return
        stats = self._stats
        for name, spec in self._signals:
            value = raw.get(name)
            if value is None:
                continue
            physical = spec.to_physical(value)
            entry = stats.get(name)
            if entry is None:
                stats[name] = [physical, physical, physical, 1]
            else:
                if physical < entry[0]:
                    entry[0] = physical
                if physical > entry[1]:
                    entry[1] = physical
                entry[2] += physical
                entry[3] += 1

    def _emit(self) -> None:
        selection = self.selection
        if self.aggregate == "last":
            values = self._last_values
            if values:
                self._last_values = {}
                self.put(Row(self.stream, self.priority, self._last_time, self._bus, selection.message, values,
                             True, selection.categories_of(values)))
            return
        if not self._stats:
            return
        if self.aggregate == "mean":
            result = {name: entry[2] / entry[3] for name, entry in self._stats.items()}
        else:
            index = 0 if self.aggregate == "min" else 1
            result = {name: entry[index] for name, entry in self._stats.items()}
        self._stats = {}
        start = self._period * self.period_ms / 1000 if self._period is not None else self._last_time
        self.put(Row(self.stream, self.priority, start, self._bus, selection.message, result, False,
                     selection.categories_of(result)))

    def flush(self) -> None:
        """Emit the open period (at shutdown or the end of a log)."""
        self._emit()
        self._period = None


Sampler = FullRate | ChangeSampler | PeriodSampler
