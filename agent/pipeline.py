"""The agent's data path in one process: decode -> collect -> privacy -> batch -> store.

This module only joins the stages; each stage lives in its own module and
knows nothing of the others.  The same ``Pipeline`` runs offline on a log
(``vehicle-agent replay``) and live on buses (``vehicle-agent run``): the
caller feeds ``(bus, can.Message)`` pairs and calls ``tick`` now and then.

Threads: everything here runs on the caller's thread (the pipeline thread).
The store is thread-safe because the uplink reads and deletes from its own
thread; ``on_batch`` callbacks run on the pipeline thread right after a batch
is committed (the uplink's ``notify`` just sets an event).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import can

from agent.batch import Batcher, EncodedBatch, current_boot_id
from agent.buffer.store import BatchStore
from agent.collect import CollectionPlan, Collector
from agent.decode import Decoder
from agent.model import DecodedFrame, RowSink

log = logging.getLogger(__name__)

RawListener = Callable[[str, can.Message], None]
FrameListener = Callable[[DecodedFrame], None]
# Builds the stage between collect and batch (the privacy filter) around the batcher.
RowFilterFactory = Callable[[RowSink], RowSink]


@dataclass
class BatchingOptions:
    max_age_s: float = 10.0
    max_bytes: int = 65536
    bench: bool = False


# A frame whose timestamp is this much ahead of its bus's newest one is a clock step (RTC set by GNSS,
# logger clock jump); a step back counts from the collection plan's clock_reset_s.
CLOCK_JUMP_AHEAD_S = 60.0
# Frame timestamps outside [0, year 2400] in seconds (NaN and inf included) come from a broken adapter or log.
_EARLIEST, _LATEST = 0.0, 13_569_465_600.0


@dataclass
class PipelineCounters:
    frames_in: int = 0
    batches_written: int = 0
    samples_written: int = 0
    bytes_written: int = 0
    bad_timestamps: int = 0  # frames refused before decoding (counted apart from the decode outcomes)


class Pipeline:
    def __init__(
        self,
        decoder: Decoder,
        plan: CollectionPlan,
        store: BatchStore,
        vehicle_id: str,
        row_filter: RowFilterFactory | None = None,
        batching: BatchingOptions | None = None,
        boot_id: str | None = None,
        on_trigger: Callable | None = None,
        batch_guard: Callable[[Callable[[EncodedBatch], None]], Callable[[EncodedBatch], None]] | None = None,
    ) -> None:
        batching = batching or BatchingOptions()
        self.decoder = decoder
        self.store = store
        self.boot_id = boot_id or current_boot_id()
        self.counters = PipelineCounters()
        # Per bus: newest timestamp seen, and clock steps (forward > CLOCK_JUMP_AHEAD_S, back > clock_reset_s).
        self._newest: dict[str, float] = {}
        self.clock_jumps: dict[str, int] = {}
        self._jump_back_s = plan.clock_reset_s
        self.raw_listeners: list[RawListener] = []
        self.frame_listeners: list[FrameListener] = []
        self.batch_listeners: list[Callable[[int, EncodedBatch], None]] = []
        self.batcher = Batcher(
            decoder.specs,
            # The guard (consent) may refuse a batch made under a consent since narrowed.
            sink=batch_guard(self._store_batch) if batch_guard else self._store_batch,
            vehicle_id=vehicle_id,
            boot_id=self.boot_id,
            seq_source=lambda: store.next_seq(self.boot_id),
            stream_seq_source=lambda stream: store.next_stream_seq(self.boot_id, stream),
            max_age_s=batching.max_age_s,
            max_bytes=batching.max_bytes,
            bench=batching.bench,
        )
        head: RowSink = self.batcher
        self.row_filter = row_filter(self.batcher) if row_filter else None
        if self.row_filter is not None:
            head = self.row_filter
        self.collector = Collector(plan, decoder.specs, head, on_trigger=on_trigger)

    # -- hot path ------------------------------------------------------------------
    def feed(self, bus: str, msg: can.Message) -> None:
        self.counters.frames_in += 1
        timestamp = msg.timestamp
        if not _EARLIEST <= timestamp <= _LATEST:  # NaN, inf or absurd: no stage could place it in time
            self.counters.bad_timestamps += 1
            return
        newest = self._newest.get(bus)
        if newest is None or timestamp > newest:
            if newest is not None and timestamp - newest > CLOCK_JUMP_AHEAD_S:
                self.clock_jumps[bus] = self.clock_jumps.get(bus, 0) + 1
            self._newest[bus] = timestamp
        elif newest - timestamp > self._jump_back_s:
            self.clock_jumps[bus] = self.clock_jumps.get(bus, 0) + 1
            self._newest[bus] = timestamp
        for listener in self.raw_listeners:
            listener(bus, msg)
        frame = self.decoder.decode(msg, bus)
        if frame is None:
            return
        self.collector.on_frame(frame)
        for listener in self.frame_listeners:
            listener(frame)

    def _store_batch(self, encoded: EncodedBatch) -> None:
        # Committed before anyone is told: the uplink only ever sees stored batches.
        batch_id = self.store.add(encoded)
        counters = self.counters
        counters.batches_written += 1
        counters.samples_written += encoded.samples
        counters.bytes_written += len(encoded.payload)
        for listener in self.batch_listeners:
            listener(batch_id, encoded)

    # -- housekeeping --------------------------------------------------------------
    def tick(self) -> None:
        """Close batches that are old by the wall clock (a quiet bus must not hold data)."""
        self.batcher.tick()

    def flush(self) -> None:
        """Emit open periods and close every open batch into the store (shutdown, reload)."""
        self.collector.flush()
        self.batcher.flush()

    def snapshot(self) -> dict:
        decode = {bus: c.as_dict() for bus, c in sorted(self.decoder.counters.items())}
        return {
            "frames_in": self.counters.frames_in,
            "decode": decode,
            "batches_written": self.counters.batches_written,
            "samples_written": self.counters.samples_written,
            "bytes_written": self.counters.bytes_written,
            "bad_timestamps": self.counters.bad_timestamps,
            # Batches the store refused (full disk ...): retried on the next tick; dropped past the retry bound.
            "store_errors": self.batcher.stats.sink_errors,
            "batches_dropped": self.batcher.stats.dropped_batches,
            "clock_jumps": dict(sorted(self.clock_jumps.items())),
        }
