"""Frames from the bus reader threads to the pipeline in blocks, and ``Pipeline.feed_block``.

A block goes when it holds its bus's BlockLimits.frames frames or BlockLimits.age_s after its first frame (256
and 5 ms for a bus read a frame at a time, 1024 and 40 ms for one read a block at a time); the queue is bounded
in frames and what does not fit is dropped and counted; a bus with ``recv_block`` is read a block at a time,
any other with one blocking ``recv`` and then ``recv(0)`` while frames come.  ``feed_block`` gives exactly
what ``feed`` gives for the same frames: decoded frames, rows, stored batches (byte for byte) and counters.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import deque
from pathlib import Path

import can
import pytest

from agent.batch.reading import decode_batch
from agent.cli.common import bus_map_from_config
from agent.config import load_config
from agent.flow.build import BuildOptions, build
from agent.sources.blocks import BLOCK_BUS_LIMITS, FRAME_BUS_LIMITS, BlockQueue, block_reader
from agent.sources.bus_open import bus_kwargs_from_url, open_bus
from agent.sources.live import RECV_TIMEOUT_S, LiveSource
from agent.sources.log import LogSource
from tests.e2e_support import grant
from tests.helpers.agent_config import write_agent_config
from tests.reliability.rig import BUNDLED_LOG, GRANTS

pytestmark = pytest.mark.transport


def _frames(count: int, arbitration_id: int = 0x100) -> list[can.Message]:
    return [can.Message(arbitration_id=arbitration_id, data=i.to_bytes(2, "little"), timestamp=float(i))
            for i in range(count)]


def _numbers(msgs: list[can.Message]) -> list[int]:
    return [int.from_bytes(m.data, "little") for m in msgs]


class _ListBus(can.BusABC):
    """Every frame ready at once (a bus with a backlog); records the timeout of each read."""

    def __init__(self, frames: list[can.Message]) -> None:
        super().__init__(channel="list")
        self.pending = deque(frames)
        self.timeouts: list[float | None] = []

    def _recv_internal(self, timeout):
        self.timeouts.append(timeout)
        if self.pending:
            return self.pending.popleft(), True
        if timeout:
            time.sleep(timeout)
        return None, True

    def send(self, msg, timeout=None) -> None:
        pass


class _BlockBus(_ListBus):
    """A bus with ``recv_block`` that hands out at most ``chunk`` frames per call (as a lean socketcand
    client parsing what one socket read brought)."""

    def __init__(self, frames: list[can.Message], chunk: int) -> None:
        super().__init__(frames)
        self.chunk = chunk
        self.asked: list[tuple[float, int]] = []  # (timeout, max_frames) of each recv_block call

    def recv_block(self, timeout: float, max_frames: int) -> list[can.Message]:
        self.asked.append((timeout, max_frames))
        count = min(max_frames, self.chunk, len(self.pending))
        if not count:
            time.sleep(timeout)
        return [self.pending.popleft() for _ in range(count)]

    def _recv_internal(self, timeout):
        raise AssertionError("a bus with recv_block was read frame by frame")


def _wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def _take_all(source: LiveSource, count: int, timeout: float = 10.0) -> list[tuple[str, list[can.Message]]]:
    blocks: list[tuple[str, list[can.Message]]] = []
    deadline = time.monotonic() + timeout
    while sum(len(msgs) for _, msgs in blocks) < count and time.monotonic() < deadline:
        blocks.extend(source.blocks(0.1))
    return blocks


def _blocks_from(bus: can.BusABC, count: int) -> list[tuple[str, list[can.Message]]]:
    """The blocks a LiveSource reading ``bus`` (as "pt") hands over, until ``count`` frames came."""
    source = LiveSource({"pt": bus})
    try:
        return _take_all(source, count)
    finally:
        source.close()


# -- the hand-over ------------------------------------------------------------------------------

def test_a_backlog_goes_over_in_full_blocks_and_the_rest_when_it_is_old_enough():
    bus = _ListBus(_frames(1000))
    blocks = _blocks_from(bus, 1000)
    assert [len(msgs) for _, msgs in blocks] == [256, 256, 256, 232]
    assert {name for name, _ in blocks} == {"pt"}
    msgs = [m for _, block in blocks for m in block]
    assert _numbers(msgs) == list(range(1000)) and {m.channel for m in msgs} == {"pt"}


def test_a_bus_without_recv_block_gets_one_blocking_recv_then_recv_0_while_frames_come():
    bus = _ListBus(_frames(600))
    blocks = _blocks_from(bus, 600)
    assert [len(msgs) for _, msgs in blocks] == [256, 256, 88]
    burst = [RECV_TIMEOUT_S] + [0] * (FRAME_BUS_LIMITS.frames - 1)
    # Two full blocks, then a third of 87 frames whose recv(0) loop ends on the first empty read ...
    assert bus.timeouts[:601] == burst + burst + [RECV_TIMEOUT_S] + [0] * 88
    # ... after which the reader lets the block age and takes what gathered meanwhile without waiting.
    assert bus.timeouts[601] == 0
    zero_runs = [len(list(run)) for zero, run in itertools.groupby(bus.timeouts, key=lambda t: t == 0) if zero]
    assert max(zero_runs) == FRAME_BUS_LIMITS.frames - 1  # the non-blocking loop is bounded by the block's room


class _TrickleBus(_ListBus):
    """Frames that come one at a time, ``gap`` s apart (a bus slower than its reader)."""

    def __init__(self, frames: list[can.Message], gap: float) -> None:
        super().__init__(frames)
        self.gap = gap
        self.start = None
        self.empty_polls = 0  # recv(0) that found nothing

    def _recv_internal(self, timeout):
        self.timeouts.append(timeout)
        if self.start is None:
            self.start = time.monotonic()
        if not self.pending:
            time.sleep(timeout or 0)
            return None, True
        due = self.start + _numbers([self.pending[0]])[0] * self.gap
        wait = due - time.monotonic()
        if wait > 0:
            if not timeout or wait > timeout:
                self.empty_polls += not timeout
                time.sleep(timeout or 0)
                return None, True
            time.sleep(wait)
        return self.pending.popleft(), True


def test_frames_that_trickle_are_taken_in_blocks_not_one_wake_up_each():
    bus = _TrickleBus(_frames(40), gap=0.0005)
    blocks = _blocks_from(bus, 40)
    assert _numbers([m for _, block in blocks for m in block]) == list(range(40))
    # 40 frames 0.5 ms apart (20 ms) go by age (5 ms): a handful of blocks, several frames each ...
    assert 2 <= len(blocks) <= 10 and max(len(msgs) for _, msgs in blocks) >= 5
    # ... at most two empty looks per block (right after its first frame, and after it aged), not one per frame.
    assert bus.empty_polls <= 2 * len(blocks)


def test_a_bus_with_recv_block_is_read_a_block_at_a_time():
    bus = _BlockBus(_frames(1000), chunk=100)
    source = LiveSource({"pt": bus})
    try:
        blocks = _take_all(source, 1000)
    finally:
        source.close()
    # Each block: one read that waits for its first frames, then (once it aged) one that takes what gathered.
    assert [len(msgs) for _, msgs in blocks] == [200] * 5
    room = BLOCK_BUS_LIMITS.frames
    assert bus.asked[:10] == [(RECV_TIMEOUT_S, room), (0.0, room - 100)] * 5
    assert bus.timeouts == [] and list(source.errors) == []  # never read frame by frame
    msgs = [m for _, block in blocks for m in block]
    assert _numbers(msgs) == list(range(1000)) and {m.channel for m in msgs} == {"pt"}


class _TrickleBlockBus(_BlockBus):
    """``recv_block`` over frames that arrive ``gap`` s apart (a lean socketcand client on a steady bus)."""

    def __init__(self, frames: list[can.Message], gap: float) -> None:
        super().__init__(frames, chunk=len(frames))
        self.total, self.gap, self.start = len(frames), gap, time.monotonic()

    def recv_block(self, timeout: float, max_frames: int) -> list[can.Message]:
        self.asked.append((timeout, max_frames))
        deadline = time.monotonic() + (timeout or 0)
        while True:
            arrived = min(self.total, int((time.monotonic() - self.start) / self.gap) + 1)
            ready = arrived - (self.total - len(self.pending))
            if ready > 0 or time.monotonic() >= deadline:
                return [self.pending.popleft() for _ in range(min(max(ready, 0), max_frames))]
            time.sleep(self.gap / 2)


def test_each_kind_of_bus_gathers_for_as_long_as_its_socket_can_hold_the_frames():
    # A frame-at-a-time bus (SocketCAN: a kernel buffer of a few hundred frames) hands over at 5 ms; a bus
    # read a block at a time (TCP text: thousands of frames buffered) gathers 40 ms, fewer wake-ups.
    assert block_reader(_ListBus([]))[1] == FRAME_BUS_LIMITS
    assert block_reader(_BlockBus([], chunk=1))[1] == BLOCK_BUS_LIMITS
    assert (FRAME_BUS_LIMITS.frames, FRAME_BUS_LIMITS.age_s) == (256, 0.005)
    assert (BLOCK_BUS_LIMITS.frames, BLOCK_BUS_LIMITS.age_s) == (1024, 0.04)
    bus = _TrickleBlockBus(_frames(200), gap=0.001)  # 200 frames at 1,000 frames/s: 0.2 s
    blocks = _blocks_from(bus, 200)
    assert _numbers([m for _, block in blocks for m in block]) == list(range(200))
    # By age, not by count: about 40 frames a block (5 at the frame-at-a-time bound), never a full one.
    assert 3 <= len(blocks) <= 8, [len(msgs) for _, msgs in blocks]
    assert max(len(msgs) for _, msgs in blocks) >= 25


def test_a_slow_trickle_arrives_within_the_time_bound_not_after_a_full_block():
    sender = can.Bus(interface="virtual", channel="trickle")
    source = LiveSource({"pt": open_bus(bus_kwargs_from_url("virtual://trickle"))})
    arrivals: list[tuple[float, list[can.Message]]] = []
    done = threading.Event()

    def consume() -> None:
        while not done.is_set():
            for _, msgs in source.blocks(0.05):
                arrivals.append((time.time(), msgs))

    consumer = threading.Thread(target=consume)
    consumer.start()
    try:
        for i in range(80):
            sender.send(can.Message(arbitration_id=0x10, data=i.to_bytes(2, "little")))  # stamped at send
            time.sleep(0.001)
        assert _wait_for(lambda: sum(len(msgs) for _, msgs in arrivals) == 80, timeout=5)
    finally:
        done.set()
        consumer.join()
        source.close()
        sender.shutdown()
    msgs = [m for _, block in arrivals for m in block]
    assert _numbers(msgs) == list(range(80))
    latencies = [arrived - m.timestamp for arrived, block in arrivals for m in block]
    # 80 frames never fill a block: they go by age (5 ms), each well within 0.1 s on a loaded machine too.
    assert max(latencies) < 0.1, max(latencies)
    sizes = [len(block) for _, block in arrivals]
    assert len(sizes) < 80 and max(sizes) > 1  # frames 1 ms apart share blocks


def test_frames_that_do_not_fit_are_dropped_and_counted_exactly():
    bus = _ListBus(_frames(1000))
    source = LiveSource({"pt": bus}, queue_size=300)  # nobody consumes while the reader fills the queue
    try:
        assert _wait_for(lambda: not bus.pending and len(source.queue) + source.dropped.get("pt", 0) == 1000)
        assert source.dropped == {"pt": 700} and len(source.queue) == 300
        blocks = source.blocks(0.1, max_frames=10_000)
    finally:
        source.close()
    assert _numbers([m for _, block in blocks for m in block]) == list(range(300))  # the first ones, in order
    assert source.blocks(0.0) == []


def test_two_buses_interleaved_are_both_delivered_each_in_order():
    senders = {name: can.Bus(interface="virtual", channel=f"mix-{name}") for name in ("pt", "body")}
    readers = {name: open_bus(bus_kwargs_from_url(f"virtual://mix-{name}")) for name in ("pt", "body")}
    source = LiveSource(readers, idle_timeout=0.5)
    try:
        for i in range(500):
            senders["pt"].send(can.Message(arbitration_id=0x100, data=i.to_bytes(2, "little")))
            senders["body"].send(can.Message(arbitration_id=0x200, data=(1000 + i).to_bytes(2, "little")))
        got = list(source)  # the (bus, msg) iteration existing callers use
    finally:
        source.close()
        for sender in senders.values():
            sender.shutdown()
    by_bus: dict[str, list[can.Message]] = {}
    for name, msg in got:
        by_bus.setdefault(name, []).append(msg)
    assert _numbers(by_bus["pt"]) == list(range(500))
    assert _numbers(by_bus["body"]) == list(range(1000, 1500))
    assert all(m.channel == name for name, msgs in by_bus.items() for m in msgs)
    assert source.dropped == {}


def test_the_block_queue_takes_whole_blocks_up_to_about_max_frames():
    blocks: BlockQueue[int] = BlockQueue(10)
    assert blocks.put("a", [1, 2, 3]) == 0 and blocks.put("b", [4, 5]) == 0 and blocks.put("a", [6, 7, 8]) == 0
    assert blocks.put("b", [9, 10, 11, 12]) == 2 and len(blocks) == 10  # two did not fit
    assert blocks.put("a", [13]) == 1
    assert blocks.take(0.0, max_frames=4) == [("a", [1, 2, 3]), ("b", [4, 5])]  # whole blocks, just past 4
    assert blocks.take(0.0) == [("a", [6, 7, 8]), ("b", [9, 10])] and len(blocks) == 0
    started = time.monotonic()
    assert blocks.take(0.05) == [] and time.monotonic() - started >= 0.04
    with pytest.raises(ValueError):
        BlockQueue(0)


# -- feed_block == feed ---------------------------------------------------------------------------

INCIDENT = """\
incidents:
  pre_s: 0.2
  post_s: 0.2
  triggers:
    - {name: trip1, when: "gnss_odo.DistanceTrip >= 1"}
"""


def _odd_frames(frames: list[tuple[str, can.Message]]) -> list[tuple[str, can.Message]]:
    """The log's frames with what the per-frame path treats apart: bad timestamps, clock steps (ahead and
    back), error and remote frames, an unknown id."""
    frames = list(frames)
    at = frames[1000][1].timestamp
    odd = [("truck", can.Message(timestamp=math.nan, arbitration_id=0x0CF00400, is_extended_id=True, data=bytes(8))),
           ("gps", can.Message(timestamp=math.inf, arbitration_id=0x1, data=bytes(8))),
           ("truck", can.Message(timestamp=at, is_error_frame=True)),
           ("truck", can.Message(timestamp=at, arbitration_id=0x0CF00400, is_extended_id=True, is_remote_frame=True)),
           ("gps", can.Message(timestamp=at, arbitration_id=0x7FE, data=bytes(8)))]
    frames[1000:1000] = odd
    jump = frames[3000][1].timestamp + 120.0  # a clock step ahead, then the log's own clock again (a step back)
    frames[3000:3000] = [(bus, can.Message(timestamp=jump, arbitration_id=m.arbitration_id,
                                           is_extended_id=m.is_extended_id, data=m.data))
                         for bus, m in frames[2990:3000]]
    return frames


def _as_blocks(frames: list[tuple[str, can.Message]], window: int = 50) -> list[tuple[str, list[can.Message]]]:
    """As reader threads hand them over: per window of frames, one block per bus, each bus's frames in order."""
    blocks: list[tuple[str, list[can.Message]]] = []
    for start in range(0, len(frames), window):
        per_bus: dict[str, list[can.Message]] = {}
        for bus, msg in frames[start:start + window]:
            per_bus.setdefault(bus, []).append(msg)
        blocks.extend(per_bus.items())
    return blocks


class _Run:
    """One data path from the test config over the same frames, recording what each stage put out."""

    def __init__(self, tmp: Path, extra: str, listeners: bool) -> None:
        tmp.mkdir()
        path = write_agent_config(tmp, buses="virtual", batch_age=2.0, extra=extra)
        grant(tmp / "state", GRANTS)
        self.config = load_config(path)
        self.stages = build(self.config, BuildOptions(boot_id="test-boot"))
        # What differs between two stores and two runs by design (the wall clock, a random store epoch) is
        # fixed, so the stored payloads of both runs can be compared byte for byte.
        self.stages.path.batcher.created_clock = lambda: 1_800_000_000.0
        self.stages.core.store.epoch = "test-epoch"
        self.pipeline = self.stages.path.pipeline
        self.payloads: list[bytes] = []
        self.stages.core.writer.listeners.append(lambda _id, batch: self.payloads.append(batch.payload))
        self.rows: list[tuple] = []
        privacy, batcher = self.stages.path.privacy, self.stages.path.batcher
        rows = self.rows

        class Recorder:
            def put(self, row) -> None:
                rows.append((row.stream, row.priority, row.timestamp, row.bus, row.message, dict(row.values),
                             row.raw, row.categories))
                batcher.put(row)

        privacy.sink = Recorder()
        self.decoded: list = []
        self.raw: list[tuple] = []
        if listeners:
            self.pipeline.frame_listeners.append(self.decoded.append)
            self.pipeline.raw_listeners.append(
                lambda bus, msg: self.raw.append((bus, msg.timestamp, msg.arbitration_id)))

    def finish(self) -> dict:
        self.pipeline.flush()
        self.stages.path.sidecars.flush()
        snapshot = self.pipeline.snapshot()
        counts = dict(self.pipeline.decoder.message_counts)
        self.stages.path.sidecars.close()
        self.stages.core.store.close()
        return {"snapshot": snapshot, "message_counts": counts}


def _log_frames(config) -> list[tuple[str, can.Message]]:
    return list(itertools.islice(LogSource(str(BUNDLED_LOG), bus_map=bus_map_from_config(config)), 20_000))


def _runs(tmp_path: Path, extra: str, listeners: bool) -> tuple[_Run, _Run, dict, dict]:
    by_frame, by_block = _Run(tmp_path / "feed", extra, listeners), _Run(tmp_path / "block", extra, listeners)
    blocks = _as_blocks(_odd_frames(_log_frames(by_frame.config)))
    for bus, msgs in blocks:
        for msg in msgs:
            by_frame.pipeline.feed(bus, msg)
    for bus, msgs in blocks:
        by_block.pipeline.feed_block(bus, msgs)
    return by_frame, by_block, by_frame.finish(), by_block.finish()


def test_feed_block_stores_byte_identical_batches_with_the_same_rows_and_counters(tmp_path):
    by_frame, by_block, frame_end, block_end = _runs(tmp_path, "", listeners=False)
    assert len(by_frame.payloads) >= 10 and by_frame.payloads == by_block.payloads
    assert len(by_frame.rows) > 5000 and by_frame.rows == by_block.rows
    assert frame_end == block_end
    snapshot = block_end["snapshot"]
    assert snapshot["frames_in"] == 20_015 and snapshot["bad_timestamps"] == 2
    assert snapshot["clock_jumps"]["truck"] >= 2  # the step ahead and the step back
    truck = snapshot["decode"]["truck"]
    assert truck["error_frames"] == 1 and truck["remote_frames"] == 1 and truck["decoded"] > 1000
    assert snapshot["decode"]["gps"]["unknown_id"] == 1


def test_feed_block_with_listeners_and_an_incident_trigger_sees_every_frame_as_feed_does(tmp_path):
    by_frame, by_block, frame_end, block_end = _runs(tmp_path, INCIDENT, listeners=True)
    assert len(by_frame.decoded) > 5000 and by_frame.decoded == by_block.decoded  # DecodedFrame: values exactly
    assert len(by_frame.raw) == 20_013 and by_frame.raw == by_block.raw  # all but the two bad timestamps
    assert by_frame.rows == by_block.rows
    assert frame_end == block_end and block_end["snapshot"]["frames_in"] == 20_015

    def without_created(payload: bytes) -> tuple:
        # Incident batches are stamped with the wall clock when written: the one field that may differ.
        decoded = decode_batch(payload)
        header = {k: v for k, v in decoded.header.items() if k != "created"}
        return header, [(t.message, t.bus, t.signals, t.raw, t.timestamps, t.columns, t.scales, t.offsets)
                        for t in decoded.tables]

    assert len(by_frame.payloads) == len(by_block.payloads) >= 10
    assert [without_created(p) for p in by_frame.payloads] == [without_created(p) for p in by_block.payloads]
    streams = {decode_batch(p).header["stream"] for p in by_block.payloads}
    assert "incident" in streams  # the trigger fired in both runs alike
