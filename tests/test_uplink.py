"""The MQTT uplink against a real Mosquitto (issue 4, item 1).

Batches come from a real log through the real Batcher and BatchStore
(tests/uplink_support.py); the reference receiver checks what arrived.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from agent.batch import decode_batch, iter_samples
from agent.buffer import BatchStore
from agent.uplink import Uplink
from agent.uplink.pacing import Backoff, ByteRateLimiter
from agent.uplink.topics import status_topic
from simulator.receiver import Receiver
from tests.broker import MosquittoBroker
from tests.uplink_support import (
    PRIORITIES,
    VEHICLE,
    PacedReplay,
    fill_store,
    plain_config,
    routed_rows,
    wait_until,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
# The issue asks for a 30 s outage; UPLINK_OUTAGE_SECONDS shortens it for quick local runs.
OUTAGE_SECONDS = float(os.environ.get("UPLINK_OUTAGE_SECONDS", "30"))


@pytest.fixture
def store(tmp_path: Path):
    with BatchStore(tmp_path / "buffer.sqlite", synchronous="NORMAL") as batch_store:
        yield batch_store


@pytest.fixture
def receiver_factory(tmp_path: Path):
    started: list[Receiver] = []

    def make(broker: MosquittoBroker, name: str = "rx", **kwargs) -> Receiver:
        receiver = Receiver(broker.host, broker.port, tmp_path / f"{name}.sqlite", client_id=name, **kwargs)
        receiver.start()
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        receiver.stop()


class RecordingStore:
    """The real store, recording which batch ids the uplink was handed (and so may have sent)."""

    def __init__(self, store: BatchStore) -> None:
        self.store = store
        self.handed: list[int] = []
        self._lock = threading.Lock()

    def pending(self, limit: int, exclude=()):
        batches = self.store.pending(limit, exclude)
        with self._lock:
            self.handed.extend(b.id for b in batches)
        return batches

    def mark_delivered(self, batch_id: int) -> None:
        self.store.mark_delivered(batch_id)

    def dictionaries(self) -> dict[str, bytes]:
        return self.store.dictionaries()


def arrivals(receiver: Receiver) -> list[tuple[str, int, str, int]]:
    """(boot_id, seq, stream, priority) of the unique batches in arrival order."""
    return receiver.store.query("SELECT boot_id, seq, stream, priority FROM batches ORDER BY arrival")


@pytest.mark.uplink
def test_delivers_real_batches_and_deletes_only_after_puback(mosquitto, store, receiver_factory, shared_data):
    ids = fill_store(store, shared_data)
    expected = {b.seq: b for b in store.pending(len(ids))}
    expected_samples = sum(len(row.values) for row in routed_rows(shared_data).rows)
    assert len(ids) > 50 and sum(b.header["samples"] for b in expected.values()) == expected_samples
    receiver = receiver_factory(mosquitto)
    uplink = Uplink(plain_config(mosquitto), store, VEHICLE)
    uplink.start()
    try:
        assert receiver.wait_for(len(ids), timeout=30), uplink.state()
        assert wait_until(lambda: store.counters()["pending_batches"] == 0, 10)
        state = uplink.state()
        assert state["connected"] and state["state"] == "connected"
        assert state["sent"] == state["acked"] == len(ids) and state["resent"] == 0
        assert state["bytes_acked"] == sum(len(b.payload) for b in expected.values())
        assert state["last_puback_time"] is not None
        assert wait_until(lambda: receiver.report()["status"].get(VEHICLE) == "online", 5)
    finally:
        uplink.stop()
    counters = store.counters()
    assert counters["delivered"] == len(ids) and counters["pending_batches"] == 0

    report = receiver.report()
    assert report["batches"] == len(ids) and report["corrupt"] == 0 and report["duplicates_dropped"] == 0
    assert report["samples"] == expected_samples
    assert report["gaps"] == 0
    assert set(report["by_stream"]) == set(PRIORITIES)
    # Every sample decoded at the receiver equals the sender's own decode of the same batch.
    seq = next(iter(expected))
    sent = [(t, bus, key, float(value)) for t, bus, key, value, _ in iter_samples(decode_batch(expected[seq].payload))]
    got = receiver.store.query("SELECT timestamp, bus, key, value FROM samples WHERE seq=? ORDER BY rowid", (seq,))
    assert [(t, bus, key, float(v)) for t, bus, key, v in got] == sent
    # A clean stop publishes the retained "offline" status itself (no will on a normal disconnect).
    assert wait_until(lambda: receiver.report()["status"].get(VEHICLE) == "offline", 5)


@pytest.mark.uplink
@pytest.mark.slow
def test_broker_outage_mid_replay_loses_nothing_and_drains_by_priority(mosquitto, store, receiver_factory,
                                                                       shared_data):
    receiver = receiver_factory(mosquitto, "rx-outage")
    recording = RecordingStore(store)
    uplink = Uplink(plain_config(mosquitto, backoff_max=2.0), recording, VEHICLE)
    replay = PacedReplay(store, shared_data, duration=12.0, on_batch=uplink.notify)
    uplink.start()
    replay.start()
    try:
        time.sleep(3.0)
        delivered_before = receiver.unique_batches
        assert delivered_before > 5, "the replay should have delivered batches before the outage"
        mosquitto.stop()
        outage_started = time.monotonic()
        time.sleep(min(3.0, OUTAGE_SECONDS / 2))
        during = uplink.state()
        assert not during["connected"] and during["state"] in ("backoff", "connecting")
        assert during["disconnects"] >= 1
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - outage_started)))
        assert uplink.state()["connect_failures"] >= 1, "reconnect attempts during the outage"
        backlog = store.pending(100_000)
        handed_before_restart = set(recording.handed)
        assert len(backlog) > 20 and store.counters()["pending_batches"] >= len(backlog)
        mosquitto.start()

        replay.join(timeout=60)
        assert replay.error is None and not replay.is_alive()
        total = len(replay.batch_ids)
        assert receiver.wait_for(total, timeout=60), (receiver.report(), uplink.state())
        assert wait_until(lambda: store.counters()["pending_batches"] == 0, 10)
    finally:
        uplink.stop()

    state = uplink.state()
    assert state["connects"] >= 2 and state["acked"] >= total
    report = receiver.report()
    assert report["batches"] == total and report["corrupt"] == 0 and report["gaps"] == 0
    assert report["samples"] == sum(len(row.values) for row in routed_rows(shared_data).rows)

    # The order asserted is the agent's own: the order it took batches out of the store to publish.  The
    # receiver's arrival order is the broker's: across a restart Mosquitto may deliver a message published
    # after the restart ahead of one still queued for the receiver's persistent session (seen in CI: telemetry
    # seq 74 stored before 72), and the receiver orders by (boot, seq), so only completeness is its to check.
    sent_order = list(dict.fromkeys(recording.handed))  # each batch at its first hand-out
    assert set(sent_order) == set(replay.batch_ids)
    stored = {(boot, seq) for boot, seq, _, _ in arrivals(receiver)}
    assert len(stored) == total
    # Per-stream order kept: within each stream, sequence numbers are handed out increasing.
    by_id = {b.id: b for b in backlog}
    backlog_sent = [by_id[i] for i in sent_order if i in by_id]
    for stream in PRIORITIES:
        seqs = [b.seq for b in backlog_sent if b.stream == stream]
        assert seqs == sorted(seqs), stream
    # The backlog (batches never handed out before the restart) drained incident > events > telemetry,
    # oldest first within a priority.
    fresh = [b for b in backlog_sent if b.id not in handed_before_restart]
    drained = [(b.priority, b.seq) for b in fresh]
    assert {(b.boot_id, b.seq) for b in fresh} <= stored
    assert len(drained) > 20
    assert drained == sorted(drained, key=lambda item: (-item[0], item[1]))
    assert {priority for priority, _ in drained} == set(PRIORITIES.values())


@pytest.mark.uplink
def test_in_flight_window_is_bounded_and_resent_after_broker_crash(mosquitto, store, receiver_factory, shared_data):
    window = 4
    seen_in_flight: list[int] = []
    uplink = Uplink(plain_config(mosquitto, in_flight=window, backoff_min=1.0, backoff_max=2.0), store, VEHICLE,
                    on_in_flight_change=lambda ids: seen_in_flight.append(len(ids)))
    uplink.start()
    try:
        assert wait_until(lambda: uplink.state()["connected"], 10)
        mosquitto.pause()  # the broker reads nothing and acknowledges nothing
        ids = fill_store(store, shared_data)
        first = [b.id for b in store.pending(window)]
        uplink.notify()
        assert wait_until(lambda: uplink.state()["sent"] == window, 10)
        time.sleep(0.5)
        state = uplink.state()
        assert state["sent"] == window and state["in_flight"] == window and state["acked"] == 0
        assert sorted(uplink.in_flight_ids()) == sorted(first)
        assert max(seen_in_flight) == window

        mosquitto.kill()  # crash with those batches unacknowledged
        assert store.counters()["pending_batches"] == len(ids), "nothing deleted without a PUBACK"
        mosquitto.start()
        receiver = receiver_factory(mosquitto, "rx-crash")
        assert receiver.wait_for(len(ids), timeout=30), uplink.state()
        assert wait_until(lambda: store.counters()["pending_batches"] == 0, 10)
    finally:
        uplink.stop()
    state = uplink.state()
    assert state["resent"] >= window and state["acked"] == len(ids)
    assert max(seen_in_flight) == window
    report = receiver.report()
    assert report["batches"] == len(ids) and report["corrupt"] == 0 and report["gaps"] == 0


@pytest.mark.uplink
def test_purged_in_flight_batches_are_forgotten(mosquitto, store, shared_data):
    """Consent revocation: batches purged while in flight are reported as such, never re-sent,
    and their PUBACKs are ignored."""
    window = 4
    uplink = Uplink(plain_config(mosquitto, in_flight=window), store, VEHICLE)
    uplink.start()
    try:
        assert wait_until(lambda: uplink.state()["connected"], 10)
        mosquitto.pause()
        ids = fill_store(store, shared_data, limit_rows=6000)
        uplink.notify()
        assert wait_until(lambda: len(uplink.in_flight_ids()) == window, 10)
        in_flight = set(uplink.in_flight_ids())
        doomed = in_flight | {ids[-1]}  # also one that never left
        purged = store.purge(predicate=lambda batch: batch.id in doomed)
        assert set(purged) == doomed
        uplink.forget(in_flight)
        assert uplink.in_flight_ids() == frozenset()
        mosquitto.resume()
        assert wait_until(lambda: store.counters()["pending_batches"] == 0, 20), uplink.state()
        time.sleep(0.3)
    finally:
        uplink.stop()
    state = uplink.state()
    assert state["forgotten"] == window and state["resent"] == 0
    assert state["acked"] == len(ids) - len(doomed), "PUBACKs of forgotten batches are not counted as deliveries"
    assert state["sent"] == len(ids) - 1, "the purged batch that never left was never sent"
    assert store.counters()["delivered"] == len(ids) - len(doomed)


@pytest.mark.uplink
def test_hung_broker_times_out_without_connack_then_recovers(mosquitto, store, shared_data):
    ids = fill_store(store, shared_data, limit_rows=4000)
    mosquitto.pause()  # TCP still connects (kernel backlog) but no CONNACK ever comes
    uplink = Uplink(plain_config(mosquitto, connect_timeout=0.5, backoff_max=0.5), store, VEHICLE)
    uplink.start()
    try:
        assert wait_until(lambda: uplink.state()["connect_failures"] >= 2, 10), uplink.state()
        state = uplink.state()
        assert "no CONNACK within 0.5 s" in state["last_error"] and state["connects"] == 0
        assert store.counters()["pending_batches"] == len(ids)
        mosquitto.resume()
        assert wait_until(lambda: store.counters()["pending_batches"] == 0, 20), uplink.state()
    finally:
        uplink.stop()
    assert uplink.state()["acked"] == len(ids)


@pytest.mark.uplink
def test_failure_reason_code_keeps_batch_and_retries(tmp_path, store, receiver_factory, shared_data):
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite vehicles/#\ntopic deny vehicles/+/v1/data/incident\n")
    broker = MosquittoBroker(tmp_path / "acl-broker", extra_config=f"acl_file {acl}")
    broker.start()
    try:
        ids = fill_store(store, shared_data)
        incident = [b.id for b in store.pending(len(ids)) if b.stream == "incident"]
        assert 0 < len(incident) < len(ids)
        receiver = receiver_factory(broker, "rx-acl")
        uplink = Uplink(plain_config(broker, rejected_retry=0.5), store, VEHICLE)
        uplink.start()
        try:
            assert receiver.wait_for(len(ids) - len(incident), timeout=30)
            assert wait_until(lambda: uplink.state()["rejected"] >= 2 * len(incident), 10), uplink.state()
            state = uplink.state()
            assert "Not authorized" in state["last_error"]
            assert state["acked"] == len(ids) - len(incident)
        finally:
            uplink.stop()
        left = sorted(b.id for b in store.pending(len(ids)))
        assert left == sorted(incident), "rejected batches stay in the buffer"
        assert receiver.report()["by_stream"].keys() == {"telemetry", "events"}
    finally:
        broker.stop()


@pytest.mark.uplink
def test_last_will_says_offline_when_the_agent_dies(mosquitto, tmp_path, receiver_factory):
    receiver = receiver_factory(mosquitto, "rx-will")
    script = textwrap.dedent(f"""
        import time
        from agent.buffer import BatchStore
        from agent.uplink import Uplink
        from agent.uplink.config import AllowedBroker, BrokerAddress, UplinkConfig
        config = UplinkConfig(region="r", broker=BrokerAddress("127.0.0.1", {mosquitto.port}),
                              allowed_brokers=[AllowedBroker("127.0.0.1", {mosquitto.port})],
                              allow_plaintext_loopback=True)
        Uplink(config, BatchStore({str(tmp_path / "child.sqlite")!r}), "doomed-vehicle").start()
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT,
                             env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        assert wait_until(lambda: receiver.report()["status"].get("doomed-vehicle") == "online", 20)
        child.kill()
        child.wait(10)
        assert wait_until(lambda: receiver.report()["status"].get("doomed-vehicle") == "offline", 10)
    finally:
        child.kill()
        child.wait(10)
    # The status is retained: a subscriber that comes later still learns the vehicle is offline.
    retained: list[dict] = []
    late = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    late.on_message = lambda client, userdata, message: retained.append(json.loads(message.payload))
    late.connect(mosquitto.host, mosquitto.port)
    late.subscribe(status_topic("vehicles", "doomed-vehicle"), qos=1)
    late.loop_start()
    try:
        assert wait_until(lambda: bool(retained), 5)
    finally:
        late.loop_stop()
        late.disconnect()
    assert retained[0]["state"] == "offline" and retained[0]["vehicle_id"] == "doomed-vehicle"


@pytest.mark.uplink
def test_byte_rate_limit_paces_the_drain(mosquitto, store, shared_data):
    fill_store(store, shared_data)
    total = store.counters()["pending_bytes"]
    largest = max(len(b.payload) for b in store.pending(10_000))
    rate = max(20_000, total // 3)  # about 2 s of debt after the first second's burst
    uplink = Uplink(plain_config(mosquitto, byte_rate_limit=rate), store, VEHICLE)
    started = time.monotonic()
    uplink.start()
    try:
        assert wait_until(lambda: store.counters()["pending_batches"] == 0, 30)
        elapsed = time.monotonic() - started
    finally:
        uplink.stop()
    # The bucket starts with one second of bytes; the last batch may go on credit.
    minimum = (total - rate - largest) / rate
    assert elapsed >= minimum > 1.0, (elapsed, total, rate)
    assert elapsed < total / rate + 5


def test_backoff_grows_exponentially_with_jitter_and_resets():
    backoff = Backoff(0.5, 8.0, random.Random(7))
    delays = [backoff.next_delay() for _ in range(8)]
    ceilings = [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    for delay, ceiling in zip(delays, ceilings):
        assert ceiling * 0.5 <= delay <= ceiling
    assert len({round(d / c, 6) for d, c in zip(delays, ceilings)}) == len(delays), "jitter differs per attempt"
    backoff.reset()
    assert 0.25 <= backoff.next_delay() <= 0.5


def test_rate_limiter_charges_bytes_against_the_clock():
    now = [100.0]
    limiter = ByteRateLimiter(1000, monotonic=lambda: now[0])
    assert limiter.delay_for(600) == 0.0  # a full bucket: one second of bytes
    assert limiter.delay_for(600) == pytest.approx(0.2)  # 400 left, needs 600
    now[0] += 0.2
    assert limiter.delay_for(600) == 0.0
    assert limiter.delay_for(5000) == pytest.approx(1.0)  # a batch bigger than the bucket waits for a full one
    now[0] += 1.0
    assert limiter.delay_for(5000) == 0.0
    now[0] += 1.0
    assert limiter.delay_for(10) > 0, "the big batch left the bucket in debt"
    assert ByteRateLimiter(0).delay_for(10**9) == 0.0
