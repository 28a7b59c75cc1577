"""Batcher: when batches close, headers, size limit, sequence numbers, bad rows, sink failures."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from agent.batch import Batcher, BatchError, EncodedBatch, decode_batch, iter_samples
from agent.model import Row, SignalSpec
from tests.helpers.clock import FakeClock


def _spec(message: str, signal: str, category: str = "driving", scale=1, offset=0) -> SignalSpec:
    return SignalSpec(f"{message}.{signal}", message, signal, scale, offset, False, False, 16, None, None, "", {}, "",
                      category)


SPECS = {s.key: s for s in (_spec("Speed", "v", "driving", 0.01), _spec("Speed", "ok"),
                            _spec("Batt", "soc", "charging", 0.5, -10), _spec("Gps", "lat", "location"))}


def _batcher(out: list, **kwargs) -> Batcher:
    kwargs.setdefault("clock", FakeClock(1000.0))
    return Batcher(SPECS, out.append, "veh-7", "boot-x", itertools.count(5).__next__, **kwargs)


def _speed(t: float, v: int, stream: str = "telemetry", priority: int = 1, **kw) -> Row:
    return Row(stream, priority, t, "can0", "Speed", {"v": v, "ok": 1}, **kw)


def test_batches_close_by_data_time_in_either_direction():
    out: list[EncodedBatch] = []
    batcher = _batcher(out)
    for i in range(250):  # 25 s at 10 Hz
        batcher.put(_speed(100.0 + i / 10, i))
    assert [b.header["t_min"] for b in out] == [100.0, 110.0]
    assert [b.header["t_max"] for b in out] == [109.9, 119.9]
    # a logger clock reset (time jumps back 20 s) closes the open batch
    batcher.put(_speed(104.0, 1))
    assert len(out) == 3 and out[2].header["t_min"] == 120.0 and out[2].header["t_max"] == 124.9
    batcher.flush()
    assert len(out) == 4 and out[3].header["rows"] == 1
    assert sum(b.header["rows"] for b in out) == 251


def test_tick_closes_by_wall_clock_and_flush_closes_everything():
    out: list[EncodedBatch] = []
    clock = FakeClock(1000.0)
    batcher = _batcher(out, clock=clock)
    batcher.put(_speed(5.0, 1))
    clock.now += 5
    batcher.put(Row("incident", 9, 5.5, "can0", "Batt", {"soc": 200}))
    assert batcher.tick() == 0
    clock.now += 5  # telemetry open 10 s, incident 5 s
    assert batcher.tick() == 1 and [b.stream for b in out] == ["telemetry"]
    assert batcher.open_streams() == {"incident": 1}
    assert batcher.flush() == 1 and [b.stream for b in out] == ["telemetry", "incident"]
    assert batcher.flush() == 0


def test_header_fields():
    out: list[EncodedBatch] = []
    batcher = _batcher(out, consent_version=3, bench=True, created_clock=lambda: 1234.5)
    batcher.put(_speed(1.0, 10))
    batcher.put(Row("telemetry", 4, 1.5, "can1", "Batt", {"soc": 150}, categories=frozenset({"cabin"})))
    batcher.put(Row("telemetry", 2, 2.0, "can0", "Gps.derived", {"mean": 1.25}, raw=False))
    batcher.flush()
    header = out[0].header
    assert header["vehicle_id"] == "veh-7" and header["boot_id"] == "boot-x" and header["seq"] == 5
    assert header["stream"] == "telemetry" and header["priority"] == 4  # highest row priority
    assert header["categories"] == ["cabin", "charging", "driving"]  # sorted; from specs and rows
    assert header["consent_version"] == 3 and header["bench"] is True and header["created"] == 1234.5
    assert (header["t_min"], header["t_max"], header["rows"], header["samples"]) == (1.0, 2.0, 3, 4)
    assert sorted(iter_samples(decode_batch(out[0].payload))) == [
        (1.0, "can0", "Speed.ok", 1, 1), (1.0, "can0", "Speed.v", 10 * 0.01, 10),
        (1.5, "can1", "Batt.soc", 150 * 0.5 - 10, 150), (2.0, "can0", "Gps.derived.mean", 1.25, None)]


def test_streams_are_batched_separately_with_unique_increasing_seq():
    out: list[EncodedBatch] = []
    batcher = _batcher(out)
    for i in range(300):
        batcher.put(_speed(i / 10, i, stream="telemetry" if i % 3 else "incident", priority=1 if i % 3 else 9))
    batcher.flush()
    assert {b.stream for b in out} == {"telemetry", "incident"}
    assert [b.seq for b in out] == list(range(5, 5 + len(out)))
    for batch in out:
        assert batch.priority == (9 if batch.stream == "incident" else 1)
        streams = {s for s in iter_samples(decode_batch(batch.payload))}
        assert all((round(t * 10) % 3 == 0) == (batch.stream == "incident") for t, *_ in streams)


def test_size_limit_is_hard_even_when_the_estimate_is_wrong():
    out: list[EncodedBatch] = []
    batcher = _batcher(out, max_bytes=2048, level=3)
    noise = random.Random(7)  # 16 random bits per sample: ~2 bytes each, 8x the first estimate
    rows = [Row("telemetry", 1, i / 1000, "can0", "Gps", {"lat": noise.randrange(65536)}) for i in range(6000)]
    for row in rows:
        batcher.put(row)
    batcher.flush()
    assert all(len(b.payload) <= 2048 for b in out)
    assert batcher.stats.splits >= 1  # the first estimate (0.25 B/sample) was far too optimistic
    assert sum(b.header["rows"] for b in out) == 6000
    got = Counter((t, raw) for b in out for t, _, _, _, raw in iter_samples(decode_batch(b.payload)))
    assert got == Counter((r.timestamp, r.values["lat"]) for r in rows)
    assert len({b.seq for b in out}) == len(out)


def test_raw_row_with_unknown_signal_is_rejected_without_losing_the_batch():
    out: list[EncodedBatch] = []
    batcher = _batcher(out)
    batcher.put(_speed(1.0, 1))
    with pytest.raises(BatchError, match=r"Speed\.bogus, which is not in the signal specs"):
        batcher.put(Row("telemetry", 1, 1.1, "can0", "Speed", {"v": 2, "bogus": 3}))
    batcher.put(_speed(1.2, 3))
    batcher.flush()
    assert out[0].header["rows"] == 2


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_age_s must be positive"):
        _batcher([], max_age_s=0)
    with pytest.raises(ValueError, match="max_bytes must be at least 1024"):
        _batcher([], max_bytes=100)


def test_an_open_batch_closes_at_max_open_samples_whatever_max_bytes_allows():
    # Constant values compress to almost nothing: only the sample bound closes the batch (its memory bound).
    from agent.batch.batcher import MAX_OPEN_SAMPLES

    out: list = []
    batcher = _batcher(out, max_bytes=16 * 1024 * 1024)
    rows = MAX_OPEN_SAMPLES // 2 + 1000  # two samples per row (v, ok)
    for i in range(rows):
        batcher.put(_speed(100.0 + i * 1e-5, 7))
    batcher.flush()
    assert MAX_OPEN_SAMPLES == 100_000
    assert [b.samples for b in out] == [MAX_OPEN_SAMPLES, 2000]
    assert all(len(b.payload) < 64 * 1024 for b in out)
