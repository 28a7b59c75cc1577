"""The reference receiver (issue 4, item 4): verification, dedup, gaps, latency,
shared subscriptions, zstd dictionaries and the ``vehicle-sim cloud`` command;
header fields past SQLite's range and unexpected errors are corrupt, never a
traceback that loses the message (issue 11)."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path

import msgpack
import paho.mqtt.client as mqtt
import pytest
import zstandard

from agent.batch import Batcher, EncodedBatch, TableData, decode_batch, encode_batch, iter_samples, schema_dictionary
from agent.buffer import BatchStore
from agent.uplink import Uplink
from agent.uplink.properties import CONTENT_TYPE, PAYLOAD_SHA256, parse_user_properties, user_properties
from agent.uplink.session import publish_properties
from agent.uplink.topics import data_topic, dictionary_topic
from simulator.cli import main as vehicle_sim
from simulator.receiver import BatchRejected, Receiver, verify_batch
from tests.uplink_support import VEHICLE, fill_store, plain_config, routed_rows, wait_until


@pytest.fixture
def store(tmp_path: Path):
    with BatchStore(tmp_path / "buffer.sqlite", synchronous="NORMAL") as batch_store:
        yield batch_store


@pytest.fixture
def batches(store, shared_data):
    ids = fill_store(store, shared_data, limit_rows=6000)
    stored = store.pending(len(ids))
    assert len(stored) == len(ids) > 10
    return sorted(stored, key=lambda b: b.seq)


@pytest.fixture
def receivers(tmp_path: Path):
    started: list[Receiver] = []

    def make(broker, name: str = "rx", **kwargs) -> Receiver:
        receiver = Receiver(broker.host, broker.port, tmp_path / f"{name}.sqlite", client_id=name, **kwargs)
        receiver.start()
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        receiver.stop()


class Publisher:
    """A bare MQTT client that publishes stored batches the way the uplink does (or damaged)."""

    def __init__(self, broker) -> None:
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def send(self, batch, payload: bytes | None = None, vehicle: str = VEHICLE) -> None:
        props = publish_properties(user_properties(batch), CONTENT_TYPE)
        info = self.client.publish(data_topic("vehicles", vehicle, batch.stream),
                                   batch.payload if payload is None else payload, qos=1, properties=props)
        info.wait_for_publish(5)

    def send_raw(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher(mosquitto):
    pub = Publisher(mosquitto)
    yield pub
    pub.close()


def flip(payload: bytes, index: int) -> bytes:
    return payload[:index] + bytes([payload[index] ^ 0xFF]) + payload[index + 1:]


@pytest.mark.uplink
def test_flipped_byte_is_rejected_and_reported(mosquitto, batches, receivers, publisher):
    receiver = receivers(mosquitto)
    good, damaged_body, damaged_header = batches[0], batches[1], batches[2]
    publisher.send(good)
    publisher.send(damaged_body, flip(damaged_body.payload, len(damaged_body.payload) - 10))  # inside the body
    publisher.send(damaged_header, flip(damaged_header.payload, 20))  # inside the header
    assert wait_until(lambda: receiver.report()["corrupt"] == 2 and receiver.unique_batches == 1, 10)
    report = receiver.report()
    assert report["batches"] == 1 and report["samples"] == good.header["samples"]
    reasons = [item["reason"] for item in report["corrupt_details"]]
    assert all("payload SHA-256" in reason and "damaged in transit" in reason for reason in reasons)
    assert {item["bytes"] for item in report["corrupt_details"]} == {len(damaged_body.payload),
                                                                      len(damaged_header.payload)}
    # The damaged batches are not stored: when they come again intact they are new, not duplicates.
    publisher.send(damaged_body)
    assert receiver.wait_for(2, timeout=10) and receiver.report()["duplicates_dropped"] == 0


def test_every_single_byte_flip_is_caught(batches):
    batch = min(batches, key=lambda b: len(b.payload))
    props = parse_user_properties(user_properties(batch))
    accepted = verify_batch(VEHICLE, batch.stream, batch.payload, props, received=0.0)
    assert accepted.row.seq == batch.seq and sum(1 for _ in accepted.samples) == batch.header["samples"]
    for index in range(len(batch.payload)):
        with pytest.raises(BatchRejected):
            verify_batch(VEHICLE, batch.stream, flip(batch.payload, index), props, received=0.0)
    # A sender without the payload_sha256 property: the body's own SHA-256 still catches body damage,
    # and the header is checked against the topic and the other properties.
    del props[PAYLOAD_SHA256]
    body_start = len(batch.payload) - 64
    for index in range(body_start, len(batch.payload)):
        with pytest.raises(BatchRejected, match="SHA-256 mismatch"):
            verify_batch(VEHICLE, batch.stream, flip(batch.payload, index), props, received=0.0)
    with pytest.raises(BatchRejected, match="does not match the topic"):
        verify_batch(VEHICLE, "some-other-stream", batch.payload, props, received=0.0)
    with pytest.raises(BatchRejected, match="vehicle_id"):
        verify_batch("another-vehicle", batch.stream, batch.payload, props, received=0.0)


@pytest.mark.uplink
def test_duplicates_dropped_and_gaps_found(mosquitto, batches, receivers, publisher):
    receiver = receivers(mosquitto)
    chosen = batches[:10]
    missing = {chosen[3].seq, chosen[6].seq, chosen[7].seq}
    sent = [b for b in chosen if b.seq not in missing]
    for batch in sent:
        publisher.send(batch)
    publisher.send(sent[1])  # a re-send after a lost PUBACK
    publisher.send(sent[4])
    assert receiver.wait_for(len(sent), timeout=10)
    assert wait_until(lambda: receiver.report()["duplicates_dropped"] == 2, 5)
    report = receiver.report()
    assert report["batches"] == len(sent) and report["samples"] == sum(b.header["samples"] for b in sent)
    assert report["gaps"] == 3
    assert [(g["first"], g["last"]) for g in report["gap_ranges"]] == [
        (chosen[3].seq, chosen[3].seq), (chosen[6].seq, chosen[7].seq)]
    assert report["bytes"] == sum(len(b.payload) for b in sent)
    assert report["bytes_received"] == report["bytes"] + len(sent[1].payload) + len(sent[4].payload)
    # Decoded samples equal the sender's own decode, value for value.
    first = sent[0]
    expected = [(t, key, float(v)) for t, _, key, v, _ in iter_samples(decode_batch(first.payload))]
    got = receiver.store.query("SELECT timestamp, key, value FROM samples WHERE seq=? ORDER BY rowid", (first.seq,))
    assert [(t, key, float(v)) for t, key, v in got] == expected


@pytest.mark.uplink
def test_latency_is_receive_time_minus_batch_close_time(mosquitto, batches, receivers, publisher):
    offsets = [0.25, 0.5, 1.0, 2.0]
    chosen = batches[:len(offsets)]
    lags = {b.seq: offset for b, offset in zip(chosen, offsets)}
    current: dict[str, int] = {}

    def clock() -> float:  # receive time = the batch's close time + its planned lag
        seq = current["seq"]
        return next(b.header["created"] for b in chosen if b.seq == seq) + lags[seq]

    receiver = receivers(mosquitto, clock=clock)
    for count, batch in enumerate(chosen, start=1):
        current["seq"] = batch.seq
        publisher.send(batch)
        assert receiver.wait_for(count, timeout=10)
    latency = receiver.report()["latency"]
    assert latency["count"] == 4
    assert latency["p50"] == pytest.approx(0.5) and latency["p99"] == pytest.approx(2.0)
    assert latency["max"] == pytest.approx(2.0)


@pytest.mark.uplink
def test_shared_subscription_splits_the_fleet(mosquitto, store, shared_data, receivers):
    # Two vehicles, two receivers in one group: each batch goes to exactly one of them.
    fill_store(store, shared_data, limit_rows=6000, boot_id="boot-a", vehicle="vehicle-a")
    first = store.pending(10_000)
    uplink_a = Uplink(plain_config(mosquitto, client_id="a"), store, "vehicle-a")
    left = receivers(mosquitto, "rx-left", shared_group="fleet")
    right = receivers(mosquitto, "rx-right", shared_group="fleet")
    uplink_a.start()
    try:
        assert wait_until(lambda: left.unique_batches + right.unique_batches == len(first), 20)
    finally:
        uplink_a.stop()
    with BatchStore(store.path.with_name("second.sqlite"), synchronous="NORMAL") as other:
        fill_store(other, shared_data, limit_rows=6000, boot_id="boot-b", vehicle="vehicle-b")
        second = other.pending(10_000)
        uplink_b = Uplink(plain_config(mosquitto, client_id="b"), other, "vehicle-b")
        uplink_b.start()
        try:
            total = len(first) + len(second)
            assert wait_until(lambda: left.unique_batches + right.unique_batches == total, 20)
        finally:
            uplink_b.stop()
    time.sleep(0.3)  # nothing more may come: no batch went to both
    keys = [set(r.store.query("SELECT vehicle, boot_id, seq FROM batches")) for r in (left, right)]
    assert keys[0].isdisjoint(keys[1])
    assert len(keys[0]) > 0 and len(keys[1]) > 0
    assert len(keys[0] | keys[1]) == total
    assert {v for v, _, _ in keys[0] | keys[1]} == {"vehicle-a", "vehicle-b"}
    # Status is not shared: both receivers know both vehicles are offline now.
    for receiver in (left, right):
        assert wait_until(lambda r=receiver: r.report()["status"] == {"vehicle-a": "offline",
                                                                      "vehicle-b": "offline"}, 5)


@pytest.mark.uplink
def test_dictionary_compressed_batches_decode_with_the_published_dictionary(mosquitto, store, shared_data,
                                                                            receivers, publisher):
    routed = routed_rows(shared_data)
    dictionary = schema_dictionary(routed.specs)
    ids: list[int] = []

    def sink(encoded) -> None:
        ids.append(store.add(encoded))

    batcher = Batcher(routed.specs, sink, VEHICLE, "boot-dict", lambda: store.next_seq("boot-dict"), max_age_s=2.0,
                      level=3, dictionary=dictionary)
    for row in routed.rows[:8000]:
        batcher.put(row)
    batcher.flush()
    stored = store.pending(len(ids))
    dict_id = stored[0].header["zstd_dict"]
    assert dict_id and dict_id.startswith("sha256:")
    store.put_dictionary(dict_id, dictionary)

    # A batch that comes before its dictionary is kept and decoded once the dictionary arrives.
    early = receivers(mosquitto, "rx-early")
    publisher.send(stored[0])
    assert early.wait_for(1, timeout=10)
    assert early.report()["undecoded"] == 1 and early.report()["samples"] == stored[0].header["samples"]
    assert early.store.query("SELECT COUNT(*) FROM samples")[0][0] == 0
    publisher.send_raw(dictionary_topic("vehicles", VEHICLE, dict_id), dictionary, retain=True)
    assert wait_until(lambda: early.report()["undecoded"] == 0, 10)
    assert early.store.query("SELECT COUNT(*) FROM samples")[0][0] == stored[0].header["samples"]
    # A wrong dictionary on the topic of another hash is refused.
    publisher.send_raw(dictionary_topic("vehicles", VEHICLE, "sha256:" + "0" * 64), b"not it")
    assert wait_until(lambda: early.report()["corrupt"] == 1, 5)

    # The uplink publishes the dictionary itself before the first batch that needs it.
    publisher.send_raw(dictionary_topic("vehicles", VEHICLE, dict_id), b"", retain=True)  # clear the retained copy
    late = receivers(mosquitto, "rx-uplink")
    uplink = Uplink(plain_config(mosquitto), store, VEHICLE)
    uplink.start()
    try:
        assert late.wait_for(len(ids), timeout=20)
    finally:
        uplink.stop()
    report = late.report()
    assert report["undecoded"] == 0 and report["corrupt"] == 0
    assert report["samples"] == sum(b.header["samples"] for b in stored)
    assert late.store.query("SELECT COUNT(*) FROM samples")[0][0] == report["samples"]


@pytest.mark.uplink
def test_cloud_command_reports_and_writes_json(mosquitto, store, batches, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    db_path = tmp_path / "cloud.sqlite"
    result: dict[str, int] = {}
    argv = ["cloud", "--broker", f"127.0.0.1:{mosquitto.port}", "--db", str(db_path), "--batches",
            str(len(batches)), "--duration", "30", "--report", str(report_path), "--client-id", "cli-rx"]
    command = threading.Thread(target=lambda: result.setdefault("code", vehicle_sim(argv)))
    command.start()
    # The command prints its status line once its subscription is acknowledged.
    assert wait_until(lambda: "subscribed on" in capsys.readouterr().err, 10)
    uplink = Uplink(plain_config(mosquitto), store, VEHICLE)
    uplink.start()
    try:
        command.join(30)
    finally:
        uplink.stop()
    assert result.get("code") == 0
    report = json.loads(report_path.read_text())
    assert report["batches"] == len(batches) and report["corrupt"] == 0
    assert report["samples"] == sum(b.header["samples"] for b in batches)
    assert db_path.is_file()
    out = capsys.readouterr().out
    assert f"batches      {len(batches)}" in out and "latency      p50" in out
    assert "conflicts    0\n" in out and report["conflicts"] == 0 and report["conflict_details"] == []


@pytest.mark.parametrize(("argv", "message"), [
    (["cloud", "--broker", "192.0.2.7:1883"], "plaintext MQTT only to a loopback broker"),
    (["cloud", "--broker", "127.0.0.1:http"], "port must be a number"),
    (["cloud", "--broker", "127.0.0.1", "--cert", "c.pem"], "--cert and --key go together"),
    (["cloud", "--broker", "127.0.0.1", "--ca", "/nonexistent/ca.pem"], "--ca /nonexistent/ca.pem: no such file"),
    (["cloud", "--broker", "127.0.0.1", "--share", "a/b"], "shared subscription group"),
])
def test_cloud_command_usage_errors_are_one_line(argv, message, capsys):
    assert vehicle_sim(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


# -- identity and late decoding ---------------------------------------------------------------------------

def test_the_batch_identity_comes_from_the_header(batches):
    batch = batches[0]
    props = parse_user_properties(user_properties(batch))
    verified = verify_batch(VEHICLE, batch.stream, batch.payload, props, received=0.0)
    assert "store_epoch" not in batch.header and verified.row.store_epoch == ""  # these come without one
    assert verified.row.payload_sha256 == hashlib.sha256(batch.payload).hexdigest()
    body = msgpack.unpackb(batch.payload)["body"]
    for epoch, outcome in (("0123abcd0123abcd", "0123abcd0123abcd"), (7, "store_epoch 7"), ("e" * 200, "at most")):
        payload = msgpack.packb({"header": {**batch.header, "store_epoch": epoch}, "body": body})
        if epoch == outcome:
            assert verify_batch(VEHICLE, batch.stream, payload, {}, received=0.0).row.key == \
                   (VEHICLE, epoch, batch.boot_id, batch.seq)
        else:
            with pytest.raises(BatchRejected, match=outcome):
                verify_batch(VEHICLE, batch.stream, payload, {}, received=0.0)


def _deliver(receiver: Receiver, topic: str, payload: bytes) -> None:
    message = mqtt.MQTTMessage(topic=topic.encode())
    message.payload = payload
    receiver._on_message(None, None, message)  # as paho's network thread calls it


def test_a_batch_kept_for_its_dictionary_that_then_does_not_decode_becomes_corrupt(shared_data, tmp_path):
    routed = routed_rows(shared_data)
    dictionary = schema_dictionary(routed.specs)
    encoded: list = []
    batcher = Batcher(routed.specs, encoded.append, VEHICLE, "boot-dict", iter(range(100)).__next__, max_age_s=1.0,
                      level=3, dictionary=dictionary)
    for row in routed.rows[:3000]:
        batcher.put(row)
    batcher.flush()
    good, bad = encoded[0], encoded[1]
    # The second one's first table claims 10^9 rows: verifiable without the dictionary, refused with it.
    decompressor = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(dictionary))
    envelope = msgpack.unpackb(bad.payload)
    body = msgpack.unpackb(decompressor.decompress(envelope["body"]))
    body["tables"][0][6] = 10**9
    compressed = zstandard.ZstdCompressor(dict_data=zstandard.ZstdCompressionDict(dictionary)).compress(
        msgpack.packb(body))
    bomb = msgpack.packb({"header": {**envelope["header"], "sha256": hashlib.sha256(compressed).hexdigest()},
                          "body": compressed})
    receiver = Receiver("127.0.0.1", 1, tmp_path / "rx.sqlite")  # never started: messages are delivered here
    try:
        _deliver(receiver, data_topic("vehicles", VEHICLE, good.stream), good.payload)
        _deliver(receiver, data_topic("vehicles", VEHICLE, bad.stream), bomb)
        report = receiver.report()
        assert (report["batches"], report["undecoded"], report["corrupt"], receiver.unique_batches) == (2, 2, 0, 2)
        _deliver(receiver, dictionary_topic("vehicles", VEHICLE, good.header["zstd_dict"]), dictionary)
        report = receiver.report()
        assert (report["batches"], report["undecoded"], report["corrupt"], receiver.unique_batches) == (1, 0, 1, 1)
        assert report["samples"] == good.samples == receiver.store.query("SELECT COUNT(*) FROM samples")[0][0]
        [detail] = report["corrupt_details"]
        assert "declares 1000000000 rows" in detail["reason"] and detail["bytes"] == len(bomb)
        assert detail["topic"] == data_topic("vehicles", VEHICLE, bad.stream)
    finally:
        receiver.stop()


# -- header fields SQLite cannot hold, and errors nobody expected (issue 11) -------------------------------

def tiny_batch(seq: int | object, values: tuple = (1, 2), **header) -> EncodedBatch:
    """A small real batch (encode_batch) with these header fields; ``seq`` may be anything msgpack holds."""
    table = TableData("can0", "M", False, ("a",), [1.6e9, 1.6e9 + 0.01], [(v,) for v in values], None, None)
    fields = {"vehicle_id": VEHICLE, "boot_id": "boot-range", "seq": seq, "stream": "telemetry", "stream_seq": 0,
              "priority": 0, "categories": ["driving"], "consent_version": 1, "created": 1.6e9 + 1, **header}
    batch = encode_batch(fields, [table], zstandard.ZstdCompressor())
    if "zstd_dict" in header:  # encode_batch sets its own
        envelope = msgpack.unpackb(batch.payload)
        envelope["header"]["zstd_dict"] = header["zstd_dict"]
        batch = EncodedBatch(msgpack.packb(envelope), envelope["header"])
    return batch


@pytest.mark.uplink
def test_a_seq_past_sqlite_range_is_corrupt_and_the_receiver_goes_on(mosquitto, receivers, publisher):
    receiver = receivers(mosquitto)
    publisher.send(tiny_batch(2**64 - 1))
    assert wait_until(lambda: receiver.report()["corrupt"] == 1, 10), receiver.report()
    [detail] = receiver.report()["corrupt_details"]
    assert detail["reason"] == "header seq 18446744073709551615 is out of range (0..9223372036854775807)"
    assert detail["vehicle"] == VEHICLE and detail["topic"] == data_topic("vehicles", VEHICLE, "telemetry")
    # Still running: the next valid batch is stored and decoded.
    valid = tiny_batch(1)
    publisher.send(valid)
    assert receiver.wait_for(1, timeout=10)
    report = receiver.report()
    assert (report["batches"], report["corrupt"], report["samples"]) == (1, 1, 2)
    assert receiver.store.query("SELECT seq FROM batches") == [(1,)]


@pytest.mark.parametrize(("header", "reason"), [
    ({"seq": 2**64 - 1}, "header seq 18446744073709551615 is out of range"),
    ({"seq": 2**63}, "header seq 9223372036854775808 is out of range"),
    ({"seq": -1}, "header seq -1 is out of range"),
    ({"seq": True}, "header seq True is not an integer"),
    ({"seq": "7"}, "header seq '7' is not an integer"),
    ({"seq": 1.0}, "header seq 1.0 is not an integer"),
    ({"seq": None}, "header seq None is not an integer"),
    ({"stream_seq": 2**64 - 1}, "header stream_seq 18446744073709551615 is out of range"),
    ({"stream_seq": -3}, "header stream_seq -3 is out of range"),
    ({"stream_seq": False}, "header stream_seq False is not an integer"),
    ({"priority": 2**63}, "header priority 9223372036854775808 is out of range"),
    ({"priority": [1]}, "header priority [1] is not an integer"),
    ({"created": "noon"}, "header created 'noon' is not a finite number"),
    ({"created": float("inf")}, "header created inf is not a finite number"),
    ({"categories": 5}, "header categories 5 is not a list of text"),
    ({"categories": [1, 2]}, "header categories [1, 2] is not a list of text"),
    ({"zstd_dict": [1]}, "header zstd_dict [1] is not text"),
])
def test_header_fields_sqlite_cannot_hold_are_rejected_naming_the_field(header, reason):
    batch = tiny_batch(**{"seq": 0, **header})
    with pytest.raises(BatchRejected) as caught:
        verify_batch(VEHICLE, "telemetry", batch.payload, parse_user_properties(user_properties(batch)), 2e9)
    assert str(caught.value).startswith(reason), str(caught.value)


def test_the_edges_of_the_range_are_stored(tmp_path):
    top = tiny_batch(2**63 - 1, stream_seq=2**63 - 1, priority=-(2**63), values=(2**64 - 1, 5))
    receiver = Receiver("127.0.0.1", 1, tmp_path / "rx.sqlite")  # never started: messages are delivered here
    try:
        _deliver(receiver, data_topic("vehicles", VEHICLE, "telemetry"), top.payload)
        assert receiver.report()["corrupt_details"] == [] and receiver.unique_batches == 1
        assert receiver.store.query("SELECT seq, stream_seq, priority FROM batches") == \
               [(2**63 - 1, 2**63 - 1, -(2**63))]
        # A 64-bit unsigned signal value past SQLite's integers is kept exactly, as its decimal text.
        assert receiver.store.query("SELECT value FROM samples ORDER BY timestamp") == \
               [(str(2**64 - 1),), (5,)]
    finally:
        receiver.stop()


def test_any_other_error_is_recorded_as_corrupt_and_logged_once(tmp_path, monkeypatch, caplog):
    receiver = Receiver("127.0.0.1", 1, tmp_path / "rx.sqlite")
    topic = data_topic("vehicles", VEHICLE, "telemetry")

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    try:
        monkeypatch.setattr(receiver.store, "add_batch", broken)
        with caplog.at_level(logging.ERROR, logger="simulator.receiver.client"):
            _deliver(receiver, topic, tiny_batch(0).payload)
            _deliver(receiver, topic, tiny_batch(1).payload)
        report = receiver.report()
        assert report["corrupt"] == 2 and report["batches"] == 0
        assert {d["reason"] for d in report["corrupt_details"]} == \
               {"the receiver could not process it: RuntimeError: disk on fire"}
        assert {d["vehicle"] for d in report["corrupt_details"]} == {VEHICLE}
        records = [r for r in caplog.records if r.name == "simulator.receiver.client"]
        assert len(records) == 2 and [r.exc_info is not None for r in records] == [True, False]
        monkeypatch.undo()
        _deliver(receiver, topic, tiny_batch(2).payload)  # and it goes on
        assert receiver.unique_batches == 1
    finally:
        receiver.stop()


def test_wait_quiet_does_not_count_time_disconnected_as_quiet(tmp_path):
    # A broker restart leaves the receiver reconnecting (backoff up to 2 s) while its session's queued
    # batches wait at the broker: "no message for 1 s" then meant nothing, and a leak test counted a
    # receiver holding 65 of 121 delivered batches.
    from simulator.broker import LocalBroker

    broker = LocalBroker(tmp_path / "broker").start()
    receiver = Receiver(broker.host, broker.port, tmp_path / "rx.sqlite", client_id="quiet-rx")
    receiver.start()
    try:
        broker.stop()
        time.sleep(0.3)
        started = time.monotonic()
        receiver.wait_quiet(0.2, timeout=1.5)
        assert time.monotonic() - started >= 1.4  # not back after 0.4 s: disconnected is not quiet
    finally:
        receiver.stop()
        if broker.running:
            broker.stop()
