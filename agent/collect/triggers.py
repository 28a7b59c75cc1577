"""Condition triggers: when a campaign fires, and the full-rate windows around each firing.

``Condition`` evaluates a compiled expression on every frame that carries one
of the signals it reads (time = that frame's timestamp) and decides whether it
fires: ``rising_edge`` fires when the condition becomes true (the first
evaluation counts as an edge if it is true; unknown counts as false);
``level`` fires on every evaluation that is true.  Either way it fires at most
once per ``min_interval_s``; a suppressed edge is dropped, not deferred.
Conditions are usable on their own (incident snapshots reuse them).

``WindowRecorder`` keeps the frames of the campaign's chosen signals of the
last ``pre_s`` seconds in a ring buffer.  When its trigger fires at time T it
emits the buffered frames with timestamp >= T - pre_s (the pre window), then
every frame of the chosen signals until the first one with timestamp
> T + post_s (the post window; the triggering frame itself belongs to it).
A firing inside an open window extends it; frames are never emitted twice.

A timestamp more than ``clock_reset_s`` older than the newest seen is a
logger clock reset: the history, edge state, ring buffer and open window
are dropped and everything starts afresh.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from agent.collect.evaluate import CompiledExpression
from agent.collect.samplers import Put, Selection
from agent.model import DecodedFrame, Row, SignalSpec

log = logging.getLogger(__name__)

# Memory bound of one ring buffer (e.g. 5 s of a 1000-frame/s bus fits twice).
RING_MAX_FRAMES = 10_000


@dataclass(frozen=True, slots=True)
class TriggerEvent:
    """One firing, for listeners (``Collector(on_trigger=...)``; incident snapshots)."""

    campaign: str
    timestamp: float
    bus: str
    message: str
    stream: str
    window_start: float  # timestamp - pre_s
    window_end: float  # timestamp + post_s


TriggerListener = Callable[[TriggerEvent], None]


class Condition:
    """A compiled expression plus its firing rule."""

    def __init__(self, expression: CompiledExpression, mode: str = "rising_edge", min_interval_s: float = 0.0,
                 clock_reset_s: float = 1.0) -> None:
        if mode not in ("rising_edge", "level"):
            raise ValueError(f"unknown trigger mode {mode!r}")
        self.expression = expression
        self.rising_edge = mode == "rising_edge"
        self.min_interval_s = min_interval_s
        self.clock_reset_s = clock_reset_s
        self.history = expression.new_history()
        # message name -> (signal name in the frame, name in the expression, spec) it feeds
        inputs: dict[str, list[tuple[str, str, SignalSpec]]] = {}
        for name, specs in expression.sources.items():
            for spec in specs:
                inputs.setdefault(spec.message, []).append((spec.signal, name, spec))
        self.inputs = {message: tuple(items) for message, items in inputs.items()}
        self.fired = 0
        self._was_true = False
        self._last_fire: float | None = None
        self._clock: float | None = None

    def reset(self) -> None:
        self.history.reset()
        self._was_true = False
        self._last_fire = None
        self._clock = None

    def continue_from(self, previous: Condition) -> bool:
        """Take over the state of the same condition from the data path a reload replaces, so that a reload
        is not an edge: a condition already true does not fire again (nor a new incident start) because the
        configuration was re-read.  Only the same expression in the same mode continues; True when it did."""
        if previous.expression.text != self.expression.text or previous.rising_edge != self.rising_edge:
            return False
        self.history = previous.history
        self._was_true = previous._was_true
        self._last_fire = previous._last_fire
        self._clock = previous._clock
        self.fired = previous.fired
        return True

    def feed(self, frame: DecodedFrame) -> bool:
        """Take the frame's values; True when the condition fires at ``frame.timestamp``."""
        inputs = self.inputs.get(frame.message)
        if inputs is None:
            return False
        t = frame.timestamp
        clock = self._clock
        if clock is not None and t < clock - self.clock_reset_s:
            self.reset()
            clock = None
        if clock is None or t > clock:
            self._clock = t
        raw = frame.raw
        history = self.history
        for signal, name, spec in inputs:
            value = raw.get(signal)
            if value is not None:
                history.update(name, t, spec.to_physical(value))
        now_true = self.expression.test(history, t)
        was_true = self._was_true
        self._was_true = now_true
        if not now_true or (self.rising_edge and was_true):
            return False
        if self._last_fire is not None and t - self._last_fire < self.min_interval_s:
            return False
        self._last_fire = t
        self.fired += 1
        return True


class WindowRecorder:
    """Full-rate rows of the chosen signals in [T - pre_s, T + post_s] around each firing T."""

    def __init__(self, stream: str, priority: int, put: Put, pre_s: float, post_s: float,
                 clock_reset_s: float = 1.0, max_frames: int = RING_MAX_FRAMES) -> None:
        self.stream = stream
        self.priority = priority
        self.put = put
        self.pre_s = pre_s
        self.post_s = post_s
        self.clock_reset_s = clock_reset_s
        self._ring: deque[tuple[DecodedFrame, Selection]] = deque(maxlen=max_frames)
        self._window_end: float | None = None
        self._clock: float | None = None
        # Frames pushed out of a full ring while still inside the pre window.
        self.overflowed = 0

    def _emit(self, frame: DecodedFrame, selection: Selection) -> None:
        values = selection.values(frame.raw)
        if values:
            self.put(Row(self.stream, self.priority, frame.timestamp, frame.bus, frame.message, values, True,
                         selection.categories_of(values)))

    def fire(self, timestamp: float) -> None:
        start = timestamp - self.pre_s
        for frame, selection in self._ring:
            if frame.timestamp >= start:
                self._emit(frame, selection)
        self._ring.clear()
        end = timestamp + self.post_s
        if self._window_end is None or end > self._window_end:
            self._window_end = end

    def record(self, frame: DecodedFrame, selection: Selection) -> None:
        t = frame.timestamp
        clock = self._clock
        if clock is not None and t < clock - self.clock_reset_s:
            self._ring.clear()
            self._window_end = None
            clock = None
        if clock is None or t > clock:
            self._clock = t
        end = self._window_end
        if end is not None:
            if t <= end:
                self._emit(frame, selection)
                return
            self._window_end = None
        ring = self._ring
        cutoff = t - self.pre_s
        while ring and ring[0][0].timestamp < cutoff:
            ring.popleft()
        if len(ring) == ring.maxlen:
            self.overflowed += 1
        ring.append((frame, selection))


class CampaignTrigger:
    """A trigger campaign: its condition, its recorder, and who hears about firings."""

    def __init__(self, campaign: str, stream: str, condition: Condition, recorder: WindowRecorder,
                 listener: TriggerListener | None = None) -> None:
        self.campaign = campaign
        self.stream = stream
        self.condition = condition
        self.recorder = recorder
        self.listener = listener

    def on_condition_frame(self, frame: DecodedFrame) -> None:
        if not self.condition.feed(frame):
            return
        t = frame.timestamp
        self.recorder.fire(t)
        if self.listener is not None:
            event = TriggerEvent(self.campaign, t, frame.bus, frame.message, self.stream, t - self.recorder.pre_s,
                                 t + self.recorder.post_s)
            try:
                self.listener(event)
            except Exception:  # a listener's bug must not stop collection
                log.exception("trigger listener failed for campaign %s", self.campaign)
