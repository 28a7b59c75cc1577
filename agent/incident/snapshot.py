"""Incident snapshots: every raw CAN frame and every decoded signal of the listed
categories from ``pre_s`` before a trigger to ``post_s`` after it.

``IncidentRecorder`` keeps two ring buffers, raw frames (``on_raw``) and
decoded frames (``on_frame``), covering the last ``pre_s + late_s`` seconds
of frame time.  A trigger at time T opens the window [T - pre_s, T + post_s];
it is captured from the rings once a frame later than T + post_s + settle_s
has been seen (frames of several buses arrive slightly out of order), or on
``flush``.  Edges are exact: a frame belongs to the window when
T - pre_s <= t <= T + post_s, compared in whole microseconds (the resolution
of a candump log), so a frame exactly on an edge is always in.

Triggers come from the config (rule-language conditions, reusing
``agent.collect.triggers.Condition``), from camera events (``on_camera_event``)
or from anyone calling ``trigger``.  A trigger inside a window that is still
open is added to that snapshot's trigger list instead of opening another:
one crash gives one snapshot, however many conditions it sets off.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

import can

from agent.camera.events import CameraEvent
from agent.collect.evaluate import SignalIndex
from agent.collect.triggers import Condition
from agent.incident.config import IncidentConfig
from agent.model import DecodedFrame, SignalSpec

log = logging.getLogger(__name__)

MICROSECOND = 1_000_000
# Memory bound per ring (a busy 2000 frame/s bus for 30 s is 60 000 frames).
RING_MAX_FRAMES = 400_000


def micros(t: float) -> int:
    return round(t * MICROSECOND)


@dataclass(frozen=True, slots=True)
class TriggerHit:
    name: str
    timestamp: float
    reason: str


@dataclass
class Snapshot:
    """One captured incident.  ``decoded`` frames carry only signals of ``categories``."""

    id: str
    trigger: TriggerHit  # the one that defined the window
    triggers: list[TriggerHit]  # every trigger that fell into the window, first one included
    start: float
    end: float
    pre_s: float
    post_s: float
    categories: tuple[str, ...]
    raw_frames: list[tuple[str, can.Message]]
    decoded: list[DecodedFrame]
    specs: dict[str, SignalSpec]
    complete: bool = True
    problems: list[str] = field(default_factory=list)


def snapshot_id(hit: TriggerHit) -> str:
    moment = datetime.fromtimestamp(hit.timestamp, tz=timezone.utc)
    stamp = moment.strftime("%Y%m%dT%H%M%S") + f".{moment.microsecond // 1000:03d}Z"
    return f"{stamp}-{re.sub(r'[^A-Za-z0-9_-]', '_', hit.name)[:48]}"


@dataclass
class _Capture:
    hits: list[TriggerHit]
    start_us: int
    end_us: int

    @property
    def first(self) -> TriggerHit:
        return self.hits[0]


class IncidentRecorder:
    """``on_raw``, ``on_frame``, ``flush`` and ``close_due`` belong to the pipeline's thread;
    ``trigger`` and ``on_camera_event`` may be called from any thread.  ``on_snapshot`` is called on the
    pipeline's thread with each captured snapshot (store it with ``IncidentStore.save``)."""

    def __init__(self, config: IncidentConfig, specs: Mapping[str, SignalSpec],
                 on_snapshot: Callable[[Snapshot], None], clock_reset_s: float = 1.0) -> None:
        self.config = config
        self.specs = dict(specs)
        self.on_snapshot = on_snapshot
        self.categories = frozenset(config.categories)
        index = SignalIndex(self.specs)
        self.conditions = [(item.name, Condition(item.trigger.compile(index), item.trigger.mode,
                                                 item.trigger.min_interval_s))
                           for item in config.triggers]
        self._conditions_by_message: dict[str, list[tuple[str, Condition]]] = {}
        for name, condition in self.conditions:
            for message in condition.inputs:
                self._conditions_by_message.setdefault(message, []).append((name, condition))
        self._wanted: dict[str, frozenset[str]] = {}  # message -> signals of the listed categories
        self._raw: deque[tuple[int, str, can.Message]] = deque(maxlen=RING_MAX_FRAMES)
        self._decoded: deque[tuple[int, DecodedFrame]] = deque(maxlen=RING_MAX_FRAMES)
        self._keep_us = micros(config.pre_s + config.late_s)
        self._settle_us = micros(config.settle_s)
        self._pre_us = micros(config.pre_s)
        self._post_us = micros(config.post_s)
        self._newest_us: int | None = None
        self._first_us: int | None = None  # first frame since start (or since a clock reset)
        self._clock_reset_us = micros(clock_reset_s)
        self._open: list[_Capture] = []
        self._pending: deque[TriggerHit] = deque()  # from trigger(), possibly another thread
        self.snapshots = 0
        self.dropped_from_ring = 0

    # -- input ---------------------------------------------------------------------------
    def on_raw(self, bus: str, msg: can.Message) -> None:
        t_us = micros(msg.timestamp)
        if len(self._raw) == self._raw.maxlen:
            self.dropped_from_ring += 1
        self._raw.append((t_us, bus, msg))
        self._advance(t_us)

    def on_frame(self, frame: DecodedFrame) -> None:
        t_us = micros(frame.timestamp)
        wanted = self._wanted.get(frame.message)
        if wanted is None:
            wanted = self._wanted[frame.message] = frozenset(
                spec.signal for spec in self.specs.values()
                if spec.message == frame.message and spec.category in self.categories)
        if wanted:
            raw = frame.raw
            kept = raw if wanted.issuperset(raw) else {k: v for k, v in raw.items() if k in wanted}
            if kept:
                self._decoded.append((t_us, DecodedFrame(frame.timestamp, frame.bus, frame.frame_id, frame.message,
                                                         kept)))
        for name, condition in self._conditions_by_message.get(frame.message, ()):
            if condition.feed(frame):
                self.trigger(name, frame.timestamp, f"{condition.expression.text} became true ({frame.bus} "
                                                    f"{frame.message})")
        self._advance(t_us)

    def on_camera_event(self, event: CameraEvent) -> bool:
        """A camera event whose trigger is listed in ``camera_triggers`` starts a snapshot at its time."""
        if event.trigger not in self.config.camera_triggers:
            return False
        self.trigger(f"camera_{event.trigger}", event.time,
                     f"{event.camera} camera {event.trigger} event {event.event_id}")
        return True

    def trigger(self, name: str, timestamp: float, reason: str) -> None:
        """Start (or join) a snapshot at ``timestamp``.  Safe to call from any thread (e.g. the
        camera spool's): the trigger is queued and acted on with the next frame, ``flush`` or
        ``close_due``, all of which run on the pipeline's thread."""
        self._pending.append(TriggerHit(name, timestamp, reason))

    def _open_pending(self) -> None:
        while self._pending:
            hit = self._pending.popleft()
            t_us = micros(hit.timestamp)
            joined = next((c for c in self._open if c.start_us <= t_us <= c.end_us), None)
            if joined is not None:
                joined.hits.append(hit)
                log.info("incident trigger %s at %.6f joins the snapshot of %s", hit.name, hit.timestamp,
                         joined.first.name)
                continue
            self._open.append(_Capture([hit], t_us - self._pre_us, t_us + self._post_us))
            log.warning("incident trigger %s at %.6f: %s", hit.name, hit.timestamp, hit.reason)

    # -- windows -------------------------------------------------------------------------
    def _advance(self, t_us: int) -> None:
        if self._newest_us is not None and t_us < self._newest_us - self._clock_reset_us:
            self._clock_reset()
        if self._first_us is None:
            self._first_us = t_us
        if self._newest_us is None or t_us > self._newest_us:
            self._newest_us = t_us
        newest = self._newest_us
        self._open_pending()
        if self._open:
            due = [c for c in self._open if newest > c.end_us + self._settle_us]
            for capture in due:
                self._open.remove(capture)
                self._emit(capture, complete=True)
        self._trim(newest)

    def _trim(self, newest: int) -> None:
        cutoff = newest - self._keep_us
        if self._open:
            cutoff = min(cutoff, min(c.start_us for c in self._open))
        for ring in (self._raw, self._decoded):
            while ring and ring[0][0] < cutoff:
                ring.popleft()

    def _clock_reset(self) -> None:
        """The log's clock jumped back (logger restart): windows of the old clock end here."""
        log.warning("incident recorder: frame clock jumped back; capturing open windows and starting afresh")
        self.flush()
        self._raw.clear()
        self._decoded.clear()
        self._newest_us = None
        self._first_us = None

    def flush(self) -> list[Snapshot]:
        """Capture every open window now (end of a log, shutdown); a window whose end was
        not reached yet is marked incomplete."""
        self._open_pending()
        captured = []
        for capture in list(self._open):
            self._open.remove(capture)
            reached = self._newest_us is not None and self._newest_us >= capture.end_us
            captured.append(self._emit(capture, complete=reached))
        return captured

    def close_due(self, now: float) -> list[Snapshot]:
        """For a live bus that went quiet: capture windows whose end (plus settle) is before ``now``."""
        self._open_pending()
        now_us = micros(now)
        due = [c for c in self._open if now_us > c.end_us + self._settle_us]
        captured = []
        for capture in due:
            self._open.remove(capture)
            reached = self._newest_us is not None and self._newest_us >= capture.end_us
            captured.append(self._emit(capture, complete=reached))
        return captured

    @property
    def open_windows(self) -> int:
        return len(self._open) + len(self._pending)

    def _emit(self, capture: _Capture, complete: bool) -> Snapshot:
        start_us, end_us = capture.start_us, capture.end_us
        raw = [(bus, msg) for t, bus, msg in self._raw if start_us <= t <= end_us]
        raw.sort(key=lambda item: item[1].timestamp)  # stable: equal times keep arrival order
        decoded = [frame for t, frame in self._decoded if start_us <= t <= end_us]
        decoded.sort(key=lambda frame: frame.timestamp)
        problems = []
        if not complete:
            problems.append("capture ended before the end of the window (no later frames)")
        buffered = [ring[0][0] for ring in (self._raw, self._decoded) if ring]
        if self._first_us is None or self._first_us > start_us:
            problems.append("recording started less than pre_s before the trigger")
            complete = False
        elif buffered and min(buffered) > start_us:
            problems.append("the start of the window was no longer buffered (trigger arrived more than late_s "
                            "late, or the ring buffer overflowed)")
            complete = False
        first = capture.first
        snapshot = Snapshot(
            id=snapshot_id(first), trigger=first, triggers=list(capture.hits),
            start=start_us / MICROSECOND, end=end_us / MICROSECOND, pre_s=self.config.pre_s,
            post_s=self.config.post_s, categories=self.config.categories, raw_frames=raw, decoded=decoded,
            specs=self.specs, complete=complete, problems=problems)
        self.snapshots += 1
        try:
            self.on_snapshot(snapshot)
        except Exception:  # the recorder must keep running; the consumer logs its own failure too
            log.exception("incident snapshot %s: on_snapshot failed", snapshot.id)
        return snapshot
