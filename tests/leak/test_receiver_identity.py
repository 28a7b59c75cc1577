"""The reference receiver names a batch by (vehicle, store_epoch, boot_id, seq) and checks content on a repeat.

Through a real Mosquitto, with batches made by the real Batcher from the real Kona log:

i)   a forged batch published first under a real batch's identity keeps its place, but the real batch that
     follows is a *conflict*: counted and kept aside byte for byte, never silently dropped as a duplicate;
ii)  a buffer store replaced mid-boot numbers again from 0 under the same boot id, but with a new store
     epoch: all 128 batches of the two stores are stored.  Without the epoch (older agents) the second 64
     are conflicts, reported as such, not silent duplicates;
iii) a small batch whose table claims 10^9 rows is refused as corrupt, naming the reason, with bounded
     memory, and the receiver goes on storing the next valid batch.

Below them, the same decisions made by the database alone: two connections on one file agree, conflict
payloads are kept within their limits, and a database of the previous schema is migrated (epoch "").
"""

from __future__ import annotations

import hashlib
import itertools
import sqlite3
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgpack
import paho.mqtt.client as mqtt
import pytest
import zstandard

from agent.batch import Batcher, EncodedBatch
from agent.batch.columns import capacity
from agent.batch.identity import BatchNumbers
from agent.uplink.properties import CONTENT_TYPE, user_properties
from agent.uplink.session import publish_properties
from agent.uplink.topics import data_topic
from simulator.receiver import Receiver, ReceiverStore, build_report, format_report
from simulator.receiver import store as receiver_store
from simulator.receiver.store import CONFLICT, DUPLICATE, STORED, BatchRow
from tests.uplink_support import VEHICLE, routed_rows, wait_until

pytestmark = pytest.mark.leak

BOOT = "boot-same"


def real_batches(shared_data: Path, epoch: str, count: int, first_row: int = 0) -> list[EncodedBatch]:
    """``count`` batches numbered 0.. in one boot by a store of this epoch ("" = an agent without epochs),
    made by the real Batcher from the routed Kona rows starting at ``first_row``."""
    routed = routed_rows(shared_data)
    seq = itertools.count()
    per_stream: dict[str, itertools.count] = {}

    def numbering(stream: str) -> BatchNumbers:
        return BatchNumbers(epoch, BOOT, next(seq), next(per_stream.setdefault(stream, itertools.count())))

    out: list[EncodedBatch] = []
    batcher = Batcher(routed.specs, out.append, VEHICLE, numbering=numbering, max_age_s=0.25, level=3)
    for row in routed.rows[first_row:]:
        batcher.put(row)
        if len(out) >= count:
            break
    assert len(out) >= count, "the log is too short for this many batches"
    batches = out[:count]
    assert [b.seq for b in batches] == list(range(count))
    return batches


def sha(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


class Publisher:
    """Publishes batches the way the uplink does: QoS 1, the batch topic, the header as user properties."""

    def __init__(self, host: str, port: int) -> None:
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                                  client_id=f"forger-{uuid.uuid4().hex[:8]}")
        self.client.connect(host, port)
        self.client.loop_start()

    def send(self, batch: EncodedBatch) -> None:
        props = publish_properties(user_properties(batch), CONTENT_TYPE)
        info = self.client.publish(data_topic("vehicles", VEHICLE, batch.stream), batch.payload, qos=1,
                                   properties=props)
        info.wait_for_publish(5)
        assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher(mosquitto) -> Iterator[Publisher]:
    pub = Publisher(mosquitto.host, mosquitto.port)
    yield pub
    pub.close()


@pytest.fixture
def receivers(mosquitto, tmp_path: Path) -> Iterator:
    started: list[Receiver] = []

    def make(name: str) -> Receiver:
        receiver = Receiver(mosquitto.host, mosquitto.port, tmp_path / f"{name}.sqlite", client_id=name)
        receiver.start()
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        receiver.stop()


def settled(receiver: Receiver, messages: int, timeout: float = 20) -> dict:
    """The report once ``messages`` data messages are accounted for (stored, duplicate, conflict, corrupt)."""
    def total() -> int:
        report = receiver.report()
        return report["batches"] + report["duplicates_dropped"] + report["conflicts"] + report["corrupt"]

    assert wait_until(lambda: total() >= messages, timeout), receiver.report()
    receiver.wait_quiet(0.2, timeout=5)
    report = receiver.report()
    assert total() == messages, report
    return report


def conflict_rows(receiver: Receiver) -> list[tuple]:
    return receiver.store.query("SELECT store_epoch, boot_id, seq, stream, payload_sha256, stored_sha256, bytes, "
                                "topic, payload, repeats FROM conflicts ORDER BY id")


def test_a_forged_batch_first_keeps_its_place_and_the_real_one_is_a_conflict_kept_aside(
        shared_data, receivers, publisher):
    epoch = "5eed5eed5eed5eed"
    real = real_batches(shared_data, epoch, 8)[5]
    # The forger knows the identity (it is in the clear on the topic's user properties) but not the data:
    # another slice of the log, numbered exactly like the real batch.
    forged = next(b for b in real_batches(shared_data, epoch, 8, first_row=12000) if b.seq == real.seq)
    assert (forged.header["store_epoch"], forged.boot_id, forged.seq) == (epoch, real.boot_id, real.seq)
    assert sha(forged.payload) != sha(real.payload)
    receiver = receivers("rx-forged")

    publisher.send(forged)
    assert receiver.wait_for(1, timeout=10)
    publisher.send(real)
    report = settled(receiver, 2)
    assert (report["batches"], report["conflicts"], report["duplicates_dropped"], report["corrupt"]) == (1, 1, 0, 0)
    assert receiver.store.conflict_count() == receiver.store.counter("conflicts") == 1
    # The first payload stays stored; the real one is kept aside, byte for byte.
    stored = receiver.store.query("SELECT store_epoch, boot_id, seq, payload_sha256, bytes, samples FROM batches")
    assert stored == [(epoch, BOOT, real.seq, sha(forged.payload), len(forged.payload), forged.samples)]
    assert receiver.store.query("SELECT COUNT(*) FROM samples")[0][0] == forged.samples
    [row] = conflict_rows(receiver)
    assert row == (epoch, BOOT, real.seq, real.stream, sha(real.payload), sha(forged.payload), len(real.payload),
                   data_topic("vehicles", VEHICLE, real.stream), real.payload, 1)
    assert report["bytes"] == len(forged.payload)
    assert report["bytes_received"] == len(forged.payload) + len(real.payload)
    [detail] = report["conflict_details"]
    assert detail["payload_kept"] and detail["stored_sha256"] == sha(forged.payload)

    # Again: the real payload is still a conflict (the same row, counted twice); the forged one a duplicate.
    publisher.send(real)
    publisher.send(forged)
    report = settled(receiver, 4)
    assert (report["batches"], report["conflicts"], report["duplicates_dropped"]) == (1, 2, 1)
    assert [(r[4], r[9]) for r in conflict_rows(receiver)] == [(sha(real.payload), 2)]


def test_a_store_replaced_mid_boot_loses_nothing_and_without_epochs_the_repeats_are_conflicts(
        shared_data, receivers, publisher):
    first = real_batches(shared_data, "aaaaaaaaaaaaaaaa", 64)
    second = real_batches(shared_data, "bbbbbbbbbbbbbbbb", 64, first_row=11000)
    assert {(b.boot_id, b.seq) for b in first} == {(b.boot_id, b.seq) for b in second}
    receiver = receivers("rx-epochs")
    for batch in first + second:
        publisher.send(batch)
    report = settled(receiver, 128)
    assert (report["batches"], report["duplicates_dropped"], report["conflicts"], report["corrupt"]) == \
           (128, 0, 0, 0)
    assert report["samples"] == sum(b.samples for b in first + second)
    assert receiver.store.query("SELECT COUNT(*) FROM samples")[0][0] == report["samples"]
    assert report["gaps"] == 0  # each store's numbers are complete on their own
    assert dict(receiver.store.query("SELECT store_epoch, COUNT(*) FROM batches GROUP BY store_epoch")) == \
           {"aaaaaaaaaaaaaaaa": 64, "bbbbbbbbbbbbbbbb": 64}

    # The same two stores from an agent that sends no epoch: the second 64 share the first 64's identities.
    old_first = real_batches(shared_data, "", 64)
    old_second = real_batches(shared_data, "", 64, first_row=11000)
    assert all("store_epoch" not in b.header for b in old_first + old_second)
    old = receivers("rx-no-epochs")
    for batch in old_first + old_second:
        publisher.send(batch)
    report = settled(old, 128)
    assert (report["batches"], report["duplicates_dropped"], report["conflicts"], report["corrupt"]) == \
           (64, 0, 64, 0)
    rows = conflict_rows(old)
    by_seq = {b.seq: b for b in old_second}
    assert len(rows) == 64 and {r[2] for r in rows} == set(by_seq)
    for epoch, boot, seq, _stream, payload_sha, stored_sha, size, _topic, payload, repeats in rows:
        assert (epoch, boot, repeats) == ("", BOOT, 1)
        assert payload == by_seq[seq].payload and size == len(payload) and payload_sha == sha(payload)
        assert stored_sha == sha(old_first[seq].payload)
    assert sum(d["bytes"] for d in report["conflict_details"]) == sum(len(b.payload) for b in old_second)
    assert report["bytes_received"] == sum(len(b.payload) for b in old_first + old_second)


def row_bomb(batch: EncodedBatch, rows: int) -> tuple[EncodedBatch, str]:
    """The batch with one table's row count replaced (header untouched but for the body hash), and that
    table's name; the table is one whose time column holds its rows in data (so the count can be checked)."""
    envelope = msgpack.unpackb(batch.payload)
    body = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(envelope["body"]))
    index = next(i for i, t in enumerate(body["tables"]) if capacity(t[7])[0] is not None)
    table = body["tables"][index]
    table[6] = rows
    compressed = zstandard.ZstdCompressor(level=19).compress(msgpack.packb(body))
    header = {**envelope["header"], "sha256": sha(compressed)}
    payload = msgpack.packb({"header": header, "body": compressed})
    return EncodedBatch(payload, header), f"table {index} ({table[4]}/{table[0]}): declares {rows} rows"


def test_a_row_count_bomb_is_refused_as_corrupt_and_the_receiver_goes_on(shared_data, receivers, publisher):
    batches = real_batches(shared_data, "cccccccccccccccc", 6)
    small = min(batches[:5], key=lambda b: len(b.payload))
    bomb, where = row_bomb(small, 10**9)
    assert len(bomb.payload) < 4096
    receiver = receivers("rx-bomb")
    tracemalloc.start()
    try:
        started = time.monotonic()
        publisher.send(bomb)
        report = settled(receiver, 1)
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (report["batches"], report["corrupt"]) == (0, 1)
    [detail] = report["corrupt_details"]
    assert detail["reason"].startswith(where + " but its time column holds"), detail["reason"]
    assert detail["bytes"] == len(bomb.payload)
    assert peak < 100 * 1024 * 1024, f"the receiver took {peak / 2**20:.0f} MiB for a {len(bomb.payload)}-byte batch"
    assert elapsed < 5
    # The receiver is still there: the next valid batch is stored and decoded.
    publisher.send(batches[5])
    assert receiver.wait_for(1, timeout=10)
    report = settled(receiver, 2)
    assert (report["batches"], report["corrupt"], report["samples"]) == (1, 1, batches[5].samples)
    assert receiver.store.query("SELECT COUNT(*) FROM samples")[0][0] == batches[5].samples


# -- the same decisions in the database itself, without a broker ---------------------------------------------

def _row(seq: int = 0, epoch: str = "e1", payload: bytes = b"p", body: str = "body", **kw) -> BatchRow:
    fields = dict(vehicle=VEHICLE, boot_id="boot", seq=seq, stream="telemetry", stream_seq=seq, priority=0,
                  categories="driving", sha256=body, bytes=len(payload), samples=1, t_first=1.0, t_last=1.0,
                  closed=1.0, received=2.0, latency=1.0, consent_version="0", store_epoch=epoch,
                  payload_sha256=hashlib.sha256(payload).hexdigest())
    return BatchRow(**{**fields, **kw})


def _add(store: ReceiverStore, payload: bytes, **kw) -> str:
    return store.add_batch(_row(payload=payload, **kw), [(1.0, "can0", "M.a", "driving", 1, 1)], payload=payload,
                           topic="vehicles/v/v1/data/telemetry")


def test_the_database_tells_new_duplicate_and_conflict_apart_across_connections(tmp_path):
    path = tmp_path / "shared.sqlite"
    first, second = ReceiverStore(path), ReceiverStore(path)  # two receivers on one file
    try:
        assert _add(first, b"real") == STORED
        assert _add(second, b"real") == DUPLICATE
        assert _add(second, b"forged") == CONFLICT and _add(first, b"forged") == CONFLICT
        assert _add(first, b"real", epoch="e2") == STORED  # another store epoch: another batch
        assert _add(first, b"old", epoch="") == STORED  # no epoch (older agent): epoch ""
        assert (first.counter("duplicates"), first.conflict_count(), first.batch_count()) == (1, 2, 3)
        assert first.query("SELECT payload_sha256 FROM batches WHERE store_epoch='e1'") == \
               [(hashlib.sha256(b"real").hexdigest(),)]
        assert first.query("SELECT payload, repeats, bytes FROM conflicts") == [(b"forged", 2, 6)]
        assert first.query("SELECT COUNT(*) FROM samples")[0][0] == 3
        report = build_report(first)
        assert report["conflicts"] == 2 and report["conflict_details"][0]["repeats"] == 2
        assert "conflicts    2  (same identity, other payload" in format_report(report)
        assert "conflict     test-vehicle-1 epoch e1 boot boot seq 0 on vehicles/v/v1/data/telemetry" in \
               format_report(report)
    finally:
        first.close()
        second.close()


def test_conflict_payloads_are_kept_within_their_limits(tmp_path, monkeypatch):
    monkeypatch.setattr(receiver_store, "CONFLICT_PAYLOAD_BUDGET_BYTES", 3000)
    store = ReceiverStore(tmp_path / "rx.sqlite")
    try:
        assert _add(store, b"first") == STORED
        big = b"x" * (receiver_store.CONFLICT_PAYLOAD_MAX_BYTES + 1)
        for payload in (big, b"a" * 2000, b"b" * 2000):
            assert _add(store, payload) == CONFLICT
        rows = store.query("SELECT bytes, payload IS NOT NULL FROM conflicts ORDER BY id")
        assert rows == [(len(big), 0), (2000, 1), (2000, 0)]  # too big; kept; past the budget: row only
        assert [d["payload_kept"] for d in build_report(store)["conflict_details"]] == [False, True, False]
    finally:
        store.close()


V1_SCHEMA = """
CREATE TABLE batches (vehicle TEXT NOT NULL, boot_id TEXT NOT NULL, seq INTEGER NOT NULL, stream TEXT NOT NULL,
    stream_seq INTEGER, priority INTEGER NOT NULL, categories TEXT NOT NULL, sha256 TEXT NOT NULL,
    bytes INTEGER NOT NULL, samples INTEGER NOT NULL, t_first REAL, t_last REAL, closed REAL, received REAL NOT NULL,
    latency REAL, consent_version TEXT, decoded INTEGER NOT NULL, arrival INTEGER NOT NULL,
    PRIMARY KEY (vehicle, boot_id, seq));
CREATE TABLE samples (vehicle TEXT NOT NULL, boot_id TEXT NOT NULL, seq INTEGER NOT NULL, timestamp REAL NOT NULL,
    bus TEXT NOT NULL, key TEXT NOT NULL, category TEXT NOT NULL, value, raw);
CREATE INDEX samples_batch ON samples (vehicle, boot_id, seq);
CREATE TABLE undecoded (vehicle TEXT NOT NULL, boot_id TEXT NOT NULL, seq INTEGER NOT NULL,
    dictionary TEXT NOT NULL, payload BLOB NOT NULL, PRIMARY KEY (vehicle, boot_id, seq));
INSERT INTO batches VALUES ('test-vehicle-1', 'boot', 0, 'telemetry', 0, 0, 'driving', 'body', 4, 1, 1.0, 1.0, 1.0,
    2.0, 1.0, '0', 1, 0);
INSERT INTO samples VALUES ('test-vehicle-1', 'boot', 0, 1.0, 'can0', 'M.a', 'driving', 1, 1);
"""


def test_a_version_1_database_is_migrated_with_epoch_empty(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as old:
        old.executescript(V1_SCHEMA)
    store = ReceiverStore(path)
    try:
        assert store.query("SELECT store_epoch, boot_id, seq, payload_sha256 FROM batches") == [("", "boot", 0, "")]
        assert store.query("SELECT store_epoch, key FROM samples") == [("", "M.a")]
        assert store.has_batch(VEHICLE, "boot", 0)
        # Its payload SHA-256 is unknown: a repeat is judged by the body SHA-256.
        assert _add(store, b"again", epoch="") == DUPLICATE
        assert _add(store, b"other", epoch="", body="other body") == CONFLICT
        assert store.query("SELECT stored_sha256 FROM conflicts") == [("body:body",)]
    finally:
        store.close()
    assert ReceiverStore(path).batch_count() == 1  # opening again changes nothing
