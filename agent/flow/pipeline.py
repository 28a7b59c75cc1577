"""The CAN data path in one process: decode -> collect -> privacy -> batch -> (store writer).

``Pipeline`` takes its stages ready-made (``agent.flow.build`` makes them and
joins each to the next); it only feeds frames in at the top and drives the
clock-based work.  The same ``Pipeline`` runs offline on a log (``vehicle-agent
replay``) and live on buses (``vehicle-agent run``): the caller feeds
``(bus, can.Message)`` pairs (``feed``), or blocks of one bus's frames
(``feed_block``, what the live runtime gets from its reader threads), and calls
``tick`` now and then.

Threads: everything here runs on the caller's thread (the pipeline thread).
The store is thread-safe because the uplink reads and deletes from its own
thread; the writer's listeners run on the pipeline thread right after a batch
is committed (the uplink's ``notify`` just sets an event).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import can

from agent.batch import Batcher
from agent.batch.format import DEFAULT_TIME_RESOLUTION_US
from agent.collect import Collector
from agent.decode import Decoder
from agent.flow.writer import StoreWriter
from agent.model import DecodedFrame
from agent.privacy.filter import PrivacyFilter

log = logging.getLogger(__name__)

RawListener = Callable[[str, can.Message], None]
FrameListener = Callable[[DecodedFrame], None]


@dataclass
class BatchingOptions:
    max_age_s: float = 10.0
    max_bytes: int = 65536
    time_resolution_us: int = DEFAULT_TIME_RESOLUTION_US


# A frame whose timestamp is this much ahead of its bus's newest one is a clock step (RTC set by GNSS,
# logger clock jump); a step back counts from the collection plan's clock_reset_s.
CLOCK_JUMP_AHEAD_S = 60.0
# A log's own clock may start at 0, reset, or go negative (the shared Kona 2020 log does): such frames are kept
# and the steps counted.  Refused is only what no stage can place in time: NaN, inf, and magnitudes past
# year 2400 (the batch format's microsecond integers have no room for them).
_LIMIT_S = 13_569_465_600.0


@dataclass
class PipelineCounters:
    frames_in: int = 0
    bad_timestamps: int = 0  # frames refused before decoding (counted apart from the decode outcomes)


class Pipeline:
    def __init__(self, decoder: Decoder, collector: Collector, privacy: PrivacyFilter, batcher: Batcher,
                 writer: StoreWriter, clock_reset_s: float) -> None:
        self.decoder = decoder
        self.collector = collector
        self.privacy = privacy
        self.batcher = batcher
        self.writer = writer
        self.counters = PipelineCounters()
        # Per bus: newest timestamp seen, and clock steps (forward > CLOCK_JUMP_AHEAD_S, back > clock_reset_s).
        self._newest: dict[str, float] = {}
        self.clock_jumps: dict[str, int] = {}
        self._jump_back_s = clock_reset_s
        self.raw_listeners: list[RawListener] = []
        self.frame_listeners: list[FrameListener] = []

    @property
    def boot_id(self) -> str:
        return self.writer.boot_id

    # -- hot path ------------------------------------------------------------------
    def feed(self, bus: str, msg: can.Message) -> None:
        self.counters.frames_in += 1
        if not self._in_time(bus, (msg,)):  # NaN, inf or absurd: no stage could place it in time
            return
        for listener in self.raw_listeners:
            listener(bus, msg)
        frame = self.decoder.decode(msg, bus)
        if frame is None:
            return
        self.collector.on_frame(frame)
        for listener in self.frame_listeners:
            listener(frame)

    def feed_block(self, bus: str, msgs: list[can.Message]) -> None:
        """``feed`` of each of ``msgs`` (frames of ``bus``, oldest first): the same rows, batches, listener
        calls and counters.  What ``feed`` looks up per frame (the bus's clock, tables and counters, the
        stages' methods, the listeners) is looked up once per block, and the block is decoded before the
        listeners and the collector see it (decoding touches nothing but the decoder)."""
        self.counters.frames_in += len(msgs)
        timed = self._in_time(bus, msgs)
        frames = self.decoder.decode_block(timed, bus)
        handlers_of = self.collector.bus_handlers(bus)
        learn = self.collector.learn_handlers
        raw_listeners, frame_listeners = self.raw_listeners, self.frame_listeners
        for msg, frame in zip(timed, frames):
            for raw_listener in raw_listeners:
                raw_listener(bus, msg)
            if frame is None:
                continue
            handlers = handlers_of.get(frame.message)
            if handlers is None:
                handlers = learn(bus, frame.message)
            for handler in handlers:
                handler(frame)
            for listener in frame_listeners:
                listener(frame)

    def _in_time(self, bus: str, msgs: Sequence[can.Message]) -> Sequence[can.Message]:
        """The frames a stage can place in time (``msgs`` itself when all are), with the bus's clock steps
        counted: the one place that decides both, for ``feed`` and ``feed_block``."""
        low, high = -_LIMIT_S, _LIMIT_S
        ahead, back = CLOCK_JUMP_AHEAD_S, self._jump_back_s
        newest = self._newest.get(bus)
        jumps = bad = 0
        for msg in msgs:
            timestamp = msg.timestamp
            if not low <= timestamp <= high:
                bad += 1
                continue
            if newest is None or timestamp > newest:
                if newest is not None and timestamp - newest > ahead:
                    jumps += 1
                newest = timestamp
            elif newest - timestamp > back:
                jumps += 1
                newest = timestamp
        if newest is not None:
            self._newest[bus] = newest
        if jumps:
            self.clock_jumps[bus] = self.clock_jumps.get(bus, 0) + jumps
        if not bad:
            return msgs
        self.counters.bad_timestamps += bad
        return [msg for msg in msgs if low <= msg.timestamp <= high]

    # -- housekeeping --------------------------------------------------------------
    def tick(self) -> None:
        """Close batches that are old by the wall clock (a quiet bus must not hold data); retry what the
        store refused."""
        self.writer.retry()
        self.batcher.tick()

    def flush(self) -> None:
        """Emit open periods and close every open batch into the store (shutdown, reload)."""
        self.collector.flush()
        self.batcher.flush()
        self.writer.retry()

    def snapshot(self) -> dict:
        """Counters of this data path and of the store writer (which CAN, incident and camera batches share)."""
        decode = {bus: c.as_dict() for bus, c in sorted(self.decoder.counters.items())}
        written = self.writer.counters
        return {
            "frames_in": self.counters.frames_in,
            "decode": decode,
            "batches_written": written.batches_written,
            "samples_written": written.samples_written,
            "bytes_written": written.bytes_written,
            "bad_timestamps": self.counters.bad_timestamps,
            # Batches the store refused (full disk ...): retried on the next tick; dropped past the retry bound.
            "store_errors": written.store_errors,
            "batches_dropped": written.batches_dropped,
            "batches_waiting": self.writer.waiting,
            "refused_by_consent": written.refused_by_consent,
            "clock_jumps": dict(sorted(self.clock_jumps.items())),
        }
