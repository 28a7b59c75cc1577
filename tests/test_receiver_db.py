"""The reference receiver's database on SQLite and on PostgreSQL (issue 14): the same rules in both.

Real batches of the routed Kona log (tests/uplink_support.py) are verified and stored as the receiver stores
what it gets.  Every test runs on a SQLite file and on a fresh database of a real PostgreSQL server
(tests/postgres.py)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import json
import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from agent.batch import Batcher
from agent.batch.identity import BatchNumbers
from agent.buffer import BatchStore
from agent.uplink import Uplink
from agent.uplink.properties import parse_user_properties, user_properties
from simulator.cli import main as vehicle_sim
from simulator.receiver import Receiver, verify_batch
from simulator.receiver.access import export_vehicle
from simulator.receiver.migrations import SCHEMA_VERSION, SchemaTooNew
from simulator.receiver.report import build_report
from simulator.receiver.store import CONFLICT, DUPLICATE, STORED, ReceiverStore, open_receiver_store
from tests.leak.test_receiver_identity import V1_SCHEMA
from tests.uplink_support import VEHICLE, fill_store, plain_config, routed_rows, wait_until

pytestmark = pytest.mark.fleet
OTHER = "test-vehicle-2"


def make_batches(shared_data: Path, directory: Path, vehicle: str, boot_id: str, limit_rows: int) -> list:
    """Real batches numbered as the agent numbers them: store epoch, boot-wide seq and per-stream stream_seq."""
    with BatchStore(directory / f"forge-{vehicle}-{boot_id}.sqlite", synchronous="NORMAL") as buffer:
        routed = routed_rows(shared_data)

        def numbering(stream: str) -> BatchNumbers:
            return BatchNumbers(buffer.epoch, boot_id, buffer.next_seq(boot_id),
                                buffer.next_stream_seq(boot_id, stream))

        ids: list[int] = []
        batcher = Batcher(routed.specs, lambda encoded: ids.append(buffer.add(encoded)), vehicle, boot_id,
                          max_age_s=1.0, level=3, numbering=numbering)
        for row in itertools.islice(routed.rows, limit_rows):
            batcher.put(row)
        batcher.flush()
        return sorted(buffer.pending(len(ids)), key=lambda b: b.seq)


@pytest.fixture(scope="module")
def batches(shared_data, tmp_path_factory) -> list:
    """Real batches of VEHICLE, every stream, in seq order."""
    made = make_batches(shared_data, tmp_path_factory.mktemp("batches"), VEHICLE, "boot-db", 4000)
    assert len(made) > 10 and {b.stream for b in made} == {"telemetry", "events", "incident"}
    return made


@pytest.fixture(scope="module")
def other_batches(shared_data, tmp_path_factory) -> list:
    return make_batches(shared_data, tmp_path_factory.mktemp("other"), OTHER, "boot-other", 1500)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path) -> str:
    """A new, empty receiver database: a SQLite file or a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "receiver.sqlite")
    return request.getfixturevalue("postgres").new_database()


def verified(batch, vehicle: str = VEHICLE):
    return verify_batch(vehicle, batch.stream, batch.payload, parse_user_properties(user_properties(batch)),
                        time.time())


def add(store: ReceiverStore, batch, vehicle: str = VEHICLE) -> str:
    checked = verified(batch, vehicle)
    return store.add_batch(checked.row, checked.samples, payload=batch.payload,
                           topic=f"vehicles/{vehicle}/v1/data/{batch.stream}")


def stream_seq(batch) -> int:
    return int(verified(batch).row.stream_seq)


def test_batches_are_stored_once_duplicates_counted_and_conflicts_kept_aside(db, batches):
    store = open_receiver_store(db)
    try:
        assert [add(store, b) for b in batches] == [STORED] * len(batches)
        samples = sum(b.header["samples"] for b in batches)
        assert store.query("SELECT COUNT(*) FROM samples")[0][0] == samples
        stored = {sha: seq for sha, seq in store.query("SELECT payload_sha256, seq FROM batches")}
        assert stored == {hashlib.sha256(b.payload).hexdigest(): b.seq for b in batches}

        assert add(store, batches[3]) == DUPLICATE  # the same batch again: counted, dropped
        assert store.batch_count() == len(batches) and store.counter("duplicates") == 1
        assert store.query("SELECT COUNT(*) FROM samples")[0][0] == samples

        # The same identity with another payload: counted, kept aside, the stored batch untouched.
        original = verified(batches[3])
        forged_payload = batches[3].payload + b"forged"
        forged = dataclasses.replace(original.row, payload_sha256=hashlib.sha256(forged_payload).hexdigest())
        for _ in range(2):
            assert store.add_batch(forged, iter(()), payload=forged_payload, topic="t") == CONFLICT
        assert store.query("SELECT payload_sha256 FROM batches WHERE seq=?", (batches[3].seq,)) == \
            [(original.row.payload_sha256,)]
        assert store.query("SELECT seq, payload_sha256, stored_sha256, repeats, payload FROM conflicts") == \
            [(batches[3].seq, forged.payload_sha256, original.row.payload_sha256, 2, forged_payload)]

        report = build_report(store)
        assert (report["batches"], report["samples"], report["duplicates_dropped"], report["conflicts"],
                report["gaps"], report["corrupt"]) == (len(batches), samples, 1, 2, 0, 0)
        assert report["by_stream"] == {stream: {"batches": sum(b.stream == stream for b in batches),
                                                "samples": sum(b.header["samples"] for b in batches
                                                               if b.stream == stream)}
                                       for stream in ("events", "incident", "telemetry")}
        assert [d["payload_kept"] for d in report["conflict_details"]] == [True]
        json.dumps(report)  # plain numbers, whichever database
    finally:
        store.close()


def test_a_missing_batch_is_a_gap_of_its_stream(db, batches):
    telemetry = [b for b in batches if b.stream == "telemetry"]
    missing = telemetry[len(telemetry) // 2]
    store = open_receiver_store(db)
    try:
        for batch in batches:
            if batch is not missing:
                add(store, batch)
        report = build_report(store)
    finally:
        store.close()
    assert report["gaps"] == 1
    assert report["gap_ranges"] == [{"vehicle": VEHICLE, "store_epoch": verified(missing).row.store_epoch,
                                     "boot_id": "boot-db", "stream": "telemetry", "first": stream_seq(missing),
                                     "last": stream_seq(missing), "missing": 1}]


def test_two_receivers_writing_alternate_batches_see_no_false_gap(db, batches):
    first, second = open_receiver_store(db), open_receiver_store(db)
    try:
        for index, batch in enumerate(batches):
            assert add((first, second)[index % 2], batch) == STORED
        reports = [build_report(first), build_report(second)]
        assert reports[0] == reports[1]
        assert reports[0]["batches"] == len(batches) and reports[0]["gaps"] == 0
        # Both racing to store every batch: each stored exactly once, the other arrival a duplicate.
        first.query("DELETE FROM samples")
        first.query("DELETE FROM batches")
        first.query("DELETE FROM counters")
        outcomes: list[list[str]] = [[], []]

        def run(store: ReceiverStore, out: list[str]) -> None:
            out.extend(add(store, batch) for batch in batches)

        threads = [threading.Thread(target=run, args=(store, out)) for store, out in zip((first, second), outcomes)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert all(a != b for a, b in zip(*outcomes)) and len(outcomes[0]) == len(batches)
        assert first.counter("duplicates") == len(batches) and first.batch_count() == len(batches)
        assert build_report(second)["samples"] == sum(b.header["samples"] for b in batches)
        assert build_report(second)["gaps"] == 0
    finally:
        first.close()
        second.close()


def versions(db: str) -> list[int]:
    store = open_receiver_store(db)
    try:
        return [v for (v,) in store.query("SELECT version FROM schema_migrations ORDER BY version")]
    finally:
        store.close()


def test_a_fresh_database_gets_the_current_version_and_a_newer_one_is_refused(db, batches):
    assert versions(db) == [SCHEMA_VERSION]
    assert versions(db) == [SCHEMA_VERSION]  # opening again changes nothing
    store = open_receiver_store(db)
    add(store, batches[0])
    store.query("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (SCHEMA_VERSION + 1, 0.0))
    store.close()
    with pytest.raises(SchemaTooNew, match=f"schema version {SCHEMA_VERSION + 1}, newer than this receiver knows"):
        open_receiver_store(db)
    code = vehicle_sim(["cloud", "anchor", "--db", db, "--vehicle", VEHICLE])
    assert code == 2


def test_old_sqlite_files_are_migrated(tmp_path, batches):
    v1 = tmp_path / "v1.sqlite"
    with sqlite3.connect(v1) as old:
        old.executescript(V1_SCHEMA)
    store = open_receiver_store(v1)
    try:
        assert store.query("SELECT store_epoch, boot_id, seq, payload_sha256 FROM batches") == [("", "boot", 0, "")]
        assert store.query("SELECT version FROM schema_migrations") == [(SCHEMA_VERSION,)]
    finally:
        store.close()
    # Version 2 (no ledger anchors) and a version-3 file of the code before schema_migrations.
    for version, drop in ((2, ("ledger_anchors", "ledger_anchor_conflicts")), (3, ())):
        path = tmp_path / f"v{version}.sqlite"
        store = open_receiver_store(path)
        add(store, batches[0])
        store.close()
        with sqlite3.connect(path) as old:
            for table in (*drop, "schema_migrations"):
                old.execute(f"DROP TABLE {table}")
            old.execute(f"PRAGMA user_version={version}")
        store = open_receiver_store(path)
        try:
            assert store.batch_count() == 1 and store.ledger_anchor(VEHICLE) is None
            assert store.query("SELECT version FROM schema_migrations") == [(SCHEMA_VERSION,)]
            assert store.query("PRAGMA user_version") == [(SCHEMA_VERSION,)]
        finally:
            store.close()
    future = tmp_path / "future.sqlite"
    with sqlite3.connect(future) as new:
        new.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaTooNew):
        open_receiver_store(future)


def _open_at_once(db: str, barrier, results) -> None:
    barrier.wait(30)
    try:
        store = open_receiver_store(db)
        store.set_status(f"vehicle-{multiprocessing.current_process().pid}", "online", "{}", time.time())
        store.close()
        results.put("ok")
    except Exception as exc:  # reported to the test
        results.put(f"{type(exc).__name__}: {exc}")


def test_receivers_opening_an_empty_database_at_once_all_succeed(db):
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(4), context.Queue()
    processes = [context.Process(target=_open_at_once, args=(db, barrier, results)) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(90)
    assert sorted(results.get(timeout=5) for _ in processes) == ["ok"] * 4
    assert versions(db) == [SCHEMA_VERSION]
    store = open_receiver_store(db)
    try:
        assert store.query("SELECT COUNT(*) FROM status") == [(4,)]
    finally:
        store.close()


def test_the_data_access_export_holds_exactly_the_vehicles_batches(db, batches, other_batches, tmp_path):
    store = open_receiver_store(db)
    try:
        for index, batch in enumerate(batches):
            add(store, batch)
            if index < len(other_batches):
                add(store, other_batches[index], OTHER)
    finally:
        store.close()
    summary = export_vehicle(db, VEHICLE, tmp_path / "access")
    assert (summary.batches, summary.samples) == (len(batches), sum(b.header["samples"] for b in batches))
    lines = [json.loads(line) for line in (tmp_path / "access" / "batches.jsonl").read_text().splitlines()]
    assert [(d["vehicle"], d["seq"], d["payload_sha256"]) for d in lines] == \
        [(VEHICLE, b.seq, hashlib.sha256(b.payload).hexdigest()) for b in batches]
    with open(tmp_path / "access" / "samples.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == summary.samples and {row["vehicle"] for row in rows} == {VEHICLE}
    assert summary.receiver_db == db  # the absolute path, or the URL (it has no password here)
    # The command line takes the same --db.
    assert vehicle_sim(["cloud", "export", "--vehicle", OTHER, "--out", str(tmp_path / "other"), "--db", db]) == 0
    assert len((tmp_path / "other" / "batches.jsonl").read_text().splitlines()) == len(other_batches)


def test_samples_read_back_the_same_from_both_databases(postgres, batches, tmp_path):
    exports = []
    for name, db in (("sqlite", str(tmp_path / "rx.sqlite")), ("postgresql", postgres.new_database())):
        store = open_receiver_store(db)
        try:
            for batch in batches[:6]:
                add(store, batch)
        finally:
            store.close()
        export_vehicle(db, VEHICLE, tmp_path / name)
        exports.append((tmp_path / name / "samples.csv").read_text())
    assert exports[0] == exports[1]


def test_receivers_on_postgresql_and_sqlite_report_the_same(mosquitto, postgres, shared_data, tmp_path):
    """The agent's Uplink through a real Mosquitto to two receivers at once, one on each database."""
    with BatchStore(tmp_path / "buffer.sqlite", synchronous="NORMAL") as buffer:
        ids = fill_store(buffer, shared_data, limit_rows=8000)
        receivers = [Receiver(mosquitto.host, mosquitto.port, tmp_path / "rx.sqlite", client_id="rx-sqlite"),
                     Receiver(mosquitto.host, mosquitto.port, postgres.new_database(), client_id="rx-postgres")]
        for receiver in receivers:
            receiver.start()
        try:
            uplink = Uplink(plain_config(mosquitto), buffer, VEHICLE)
            uplink.start()
            try:
                for receiver in receivers:
                    assert receiver.wait_for(len(ids), timeout=60), uplink.state()
            finally:
                uplink.stop()
            for receiver in receivers:
                assert wait_until(lambda r=receiver: r.report()["status"].get(VEHICLE) == "offline", 10)
                receiver.wait_quiet(0.3, 5)
            reports = [receiver.report() for receiver in receivers]
        finally:
            for receiver in receivers:
                receiver.stop()
    assert receivers[1].store.dialect == "postgresql"
    assert reports[0]["batches"] == len(ids) and reports[0]["gaps"] == 0 and reports[0]["corrupt"] == 0
    for report in reports:
        report.pop("latency")  # each receiver's own clock
    assert reports[1] == reports[0]
