"""Durable buffer: order, delivery, quota eviction, never-evict, TTL, corruption quarantine, seq, CLI."""

from __future__ import annotations

import json
import logging
import random
import re
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import zstandard

from agent.batch import EncodedBatch, TableData, decode_batch, encode_batch
from agent.buffer import BatchStore, StoreError
from agent.cli.main import main as cli_main
from tests.helpers.clock import FakeClock

REPO = Path(__file__).resolve().parents[1]
COMPRESSOR = zstandard.ZstdCompressor(level=3)


def make_batch(seq: int, stream: str = "telemetry", priority: int = 1, categories=("driving",), rows: int = 200,
               boot_id: str = "boot-1", seed: int | None = None, store_epoch: str | None = None,
               compressor: zstandard.ZstdCompressor = COMPRESSOR) -> EncodedBatch:
    noise = random.Random(seq if seed is None else seed)
    table = TableData("can0", "M", True, ("a",), [seq + i / 1000 for i in range(rows)],
                      [(noise.randrange(1 << 16),) for _ in range(rows)], [1], [0])
    header = {"vehicle_id": "v", "boot_id": boot_id, "seq": seq, "stream": stream, "priority": priority,
              "categories": sorted(categories), "consent_version": 0, "bench": False, "created": 0.0}
    if store_epoch is not None:
        header["store_epoch"] = store_epoch
    return encode_batch(header, [table], compressor)


def test_pending_order_exclude_and_delivery(tmp_path):
    with BatchStore(tmp_path / "b.db") as store:
        ids = {}
        for seq, prio in enumerate([1, 5, 1, 5, 3]):
            ids[seq] = store.add(make_batch(seq, priority=prio))
        pending = store.pending(limit=10)
        assert [b.seq for b in pending] == [1, 3, 4, 0, 2]  # priority desc, then oldest
        assert [b.seq for b in store.pending(limit=2, exclude={ids[1]})] == [3, 4]
        first = pending[0]
        assert first.payload == make_batch(1, priority=5).payload
        assert first.header == decode_batch(first.payload).header and first.sha256 == first.header["sha256"]
        assert (first.stream, first.priority, first.categories, first.boot_id) == ("telemetry", 5, ("driving",),
                                                                                    "boot-1")
        store.mark_delivered(ids[1])
        store.mark_delivered(ids[1])  # twice: ignored
        store.mark_delivered(99999)
        assert [b.seq for b in store.pending(limit=10)] == [3, 4, 0, 2]
        counters = store.counters()
        assert counters["written"] == 5 and counters["delivered"] == 1 and counters["pending_batches"] == 4
        assert counters["pending_bytes"] == sum(len(b.payload) for b in store.pending(limit=10))


def test_survives_reopen_with_counters_and_sequence(tmp_path):
    path = tmp_path / "b.db"
    with BatchStore(path) as store:
        assert store.next_seq("boot-1") == 0
        assert store.next_seq("boot-1") == 1  # handed out, not yet committed
        store.add(make_batch(7))
        assert store.next_seq("boot-1") == 8
        assert store.next_seq("boot-2") == 0
    with BatchStore(path) as store:
        assert store.next_seq("boot-1") == 8  # persisted: a restart never reuses (boot_id, seq)
        assert [b.seq for b in store.pending(limit=5)] == [7]
        assert store.counters()["written"] == 1


def test_duplicate_add_is_idempotent_but_conflicting_content_is_refused(tmp_path):
    with BatchStore(tmp_path / "b.db") as store:
        batch = make_batch(1)
        first = store.add(batch)
        assert store.add(batch) == first
        assert store.counters()["duplicates"] == 1 and store.counters()["pending_batches"] == 1
        with pytest.raises(StoreError, match="boot-1/1 already stored with different content"):
            store.add(make_batch(1, seed=99))


def test_quota_evicts_lowest_priority_then_oldest_and_never_evict_streams_survive(tmp_path):
    batches = [make_batch(0, priority=1), make_batch(1, priority=3), make_batch(2, stream="incident", priority=0),
               make_batch(3, priority=1), make_batch(4, priority=3), make_batch(5, priority=2)]
    size = max(len(b.payload) for b in batches)
    with BatchStore(tmp_path / "b.db", quota_bytes=4 * size, never_evict={"incident"}) as store:
        for batch in batches[:4]:
            store.add(batch)
        assert store.counters()["evicted"] == 0
        store.add(batches[4])  # 5 batches > quota: evict seq 0 (prio 1, oldest); incident (prio 0) is exempt
        assert sorted(b.seq for b in store.pending(limit=10)) == [1, 2, 3, 4]
        store.add(batches[5])  # next victim: seq 3 (prio 1)
        assert sorted(b.seq for b in store.pending(limit=10)) == [1, 2, 4, 5]
        assert store.counters()["evicted"] == 2
        assert store.counters()["pending_bytes"] <= 4 * size
    with BatchStore(tmp_path / "c.db", quota_bytes=size + 1, never_evict={"incident"}) as store:
        for seq in range(3):
            store.add(make_batch(seq, stream="incident"))
        assert len(store.pending(limit=10)) == 3  # kept, over quota, counted
        assert store.counters()["over_quota"] >= 1 and store.counters()["evicted"] == 0


def test_ttl_expiry(tmp_path):
    clock = FakeClock(1_000_000.0)
    with BatchStore(tmp_path / "b.db", ttl_s={"debug": 60.0}, clock=clock) as store:
        store.add(make_batch(0, stream="debug"))
        store.add(make_batch(1, stream="telemetry"))
        clock.now += 30
        store.add(make_batch(2, stream="debug"))
        clock.now += 31  # seq 0 is 61 s old, seq 2 31 s
        assert [b.seq for b in store.pending(limit=10)] == [1, 2]
        assert store.counters()["expired"] == 1
        clock.now += 60
        assert store.expire() == 1
        assert [b.seq for b in store.pending(limit=10)] == [1]
        backlog = store.backlog()
        assert [(s["stream"], s["batches"], s["samples"]) for s in backlog] == [("telemetry", 1, 200)]
        assert backlog[0]["oldest_age_s"] == pytest.approx(121.0)


def test_corrupted_row_is_quarantined_and_the_rest_stays_readable(tmp_path, capsys):
    path = tmp_path / "b.db"
    batches = [make_batch(seq, rows=2000) for seq in range(5)]
    with BatchStore(path) as store:
        for batch in batches:
            store.add(batch)
    victim = batches[2].payload
    raw = bytearray(path.read_bytes())
    snippet = victim[len(victim) // 2: len(victim) // 2 + 24]
    offset = raw.find(snippet)
    assert offset > 0 and raw.count(snippet) == 1  # the payload's bytes are in the checkpointed file
    for i in range(4):
        raw[offset + i] ^= 0xFF
    path.write_bytes(bytes(raw))

    with BatchStore(path, read_only=True) as store:  # read-only: skipped, not moved
        assert [b.seq for b in store.pending(limit=10)] == [0, 1, 3, 4]
    assert cli_main(["inspect", str(path), "--headers-only", "-o", str(tmp_path / "h.jsonl")]) == 1
    assert "1 batch(es) failed the integrity check" in capsys.readouterr().err
    assert [json.loads(line)["header"]["seq"] for line in (tmp_path / "h.jsonl").read_text().splitlines()] == \
        [0, 1, 3, 4]
    with BatchStore(path) as store:
        assert [b.seq for b in store.pending(limit=10)] == [0, 1, 3, 4]
        counters = store.counters()
        assert counters["quarantined"] == 1 and counters["pending_batches"] == 4
        assert [q["batch_id"] for q in store.quarantined()] == [3]
        assert "SHA-256" in store.quarantined()[0]["reason"]
        assert counters["pending_bytes"] == sum(len(b.payload) for b in batches) - len(victim)
        store.add(make_batch(5))  # the store keeps working
        assert [b.seq for b in store.pending(limit=10)] == [0, 1, 3, 4, 5]
        assert all(decode_batch(b.payload) for b in store.pending(limit=10))


def test_purge_by_categories_and_predicate(tmp_path):
    with BatchStore(tmp_path / "b.db") as store:
        store.add(make_batch(0, categories=("driving",)))
        store.add(make_batch(1, categories=("location", "driving")))
        store.add(make_batch(2, categories=("cabin",)))
        store.add(make_batch(3, categories=("charging",)))
        ids = {b.seq: b.id for b in store.pending(limit=10)}
        assert store.purge(categories={"location", "cabin"}) == [ids[1], ids[2]]
        assert sorted(b.seq for b in store.pending(limit=10)) == [0, 3]
        purged = store.purge(lambda b: b.seq == 3)
        assert len(purged) == 1 and [b.seq for b in store.pending(limit=10)] == [0]
        assert store.counters()["purged"] == 3
        with pytest.raises(StoreError, match="needs categories or a predicate"):
            store.purge()


def test_threads_add_and_deliver_concurrently(tmp_path):
    with BatchStore(tmp_path / "b.db", synchronous="NORMAL") as store:
        errors: list[BaseException] = []

        def writer(base: int) -> None:
            # A zstd compressor is not thread-safe (ZstdError "not authorized at current processing stage"):
            # each writer encodes with its own, as each producer in the agent does.
            compressor = zstandard.ZstdCompressor(level=3)
            try:
                for seq in range(base, base + 25):
                    store.add(make_batch(seq, rows=20, compressor=compressor))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        def deliverer() -> None:
            try:
                for _ in range(60):
                    for batch in store.pending(limit=5):
                        store.mark_delivered(batch.id)
            except BaseException as exc:  # pragma: no cover
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(i * 100,)) for i in range(3)]
        threads.append(threading.Thread(target=deliverer))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        counters = store.counters()
        assert counters["written"] == 75
        assert counters["delivered"] + counters["pending_batches"] == 75
        assert counters["pending_bytes"] == sum(len(b.payload) for b in store.pending(limit=100))


def test_bad_options_and_files_give_one_line_errors(tmp_path):
    with pytest.raises(StoreError, match="synchronous must be one of NORMAL, FULL, EXTRA"):
        BatchStore(tmp_path / "x.db", synchronous="OFF")
    with pytest.raises(StoreError, match="no such buffer database"):
        BatchStore(tmp_path / "missing.db", read_only=True)
    not_db = tmp_path / "text.db"
    not_db.write_text("hello, this is not sqlite\n" * 100)
    with pytest.raises(StoreError, match="cannot open buffer database"):
        BatchStore(not_db)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(StoreError, match="not a buffer database"):
        BatchStore(other, read_only=True)
    with BatchStore(tmp_path / "b.db") as store, BatchStore(tmp_path / "b.db", read_only=True) as reader:
        store.add(make_batch(0))
        with pytest.raises(StoreError, match="opened read-only"):
            reader.add(make_batch(1))


def test_buffer_status_cli(tmp_path, capsys):
    path = tmp_path / "b.db"
    with BatchStore(path) as store:
        for seq in range(3):
            store.add(make_batch(seq, rows=100))
        store.add(make_batch(3, stream="incident", priority=9, rows=50))
        store.mark_delivered(store.pending(limit=1)[0].id)  # the incident batch
        store.add(make_batch(4, stream="incident", priority=9, rows=50))
    assert cli_main(["buffer", "status", "--db", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    streams = {s["stream"]: s for s in report["streams"]}
    assert (streams["telemetry"]["batches"], streams["telemetry"]["samples"]) == (3, 300)
    assert (streams["incident"]["batches"], streams["incident"]["samples"]) == (1, 50)
    assert report["counters"]["written"] == 5 and report["counters"]["delivered"] == 1
    assert cli_main(["buffer", "status", "--db", str(path)]) == 0
    text = capsys.readouterr().out
    assert "4 batches" in text and "telemetry" in text and "delivered=1" in text
    assert cli_main(["buffer", "status", "--db", str(tmp_path / "nope.db")]) == 2
    assert "no such buffer database" in capsys.readouterr().err


def test_new_store_has_a_random_epoch_kept_across_reopen(tmp_path, caplog):
    path = tmp_path / "b.db"
    with caplog.at_level(logging.INFO, logger="agent.buffer.store"), BatchStore(path) as store:
        epoch = store.epoch
        assert re.fullmatch(r"[0-9a-f]{16,}", epoch)
        assert (store.created_new, store.new_reason) == (True, "missing")
        store.add(make_batch(0, store_epoch=epoch))  # a header carrying this store's epoch is accepted
    assert any(r.levelno == logging.INFO and f"did not exist: starting a new store, epoch {epoch}" in r.getMessage()
               for r in caplog.records)
    with BatchStore(path) as store:
        assert store.epoch == epoch and (store.created_new, store.new_reason) == (False, None)
        assert [b.seq for b in store.pending(limit=5)] == [0]
    with BatchStore(path, read_only=True) as reader:
        assert reader.epoch == epoch and not reader.created_new
    with BatchStore(tmp_path / "other.db") as other:
        assert other.epoch != epoch


def test_empty_file_is_a_new_store_said_at_warning(tmp_path, caplog):
    path = tmp_path / "b.db"
    with BatchStore(path) as store:
        old = store.epoch
        store.add(make_batch(0))
        assert store.next_seq("boot-1") == 1
    for leftover in tmp_path.glob("b.db*"):
        leftover.unlink()
    path.write_bytes(b"")  # SQLite would take this as a new database without a word
    with caplog.at_level(logging.INFO, logger="agent.buffer.store"), BatchStore(path) as store:
        assert store.epoch != old and re.fullmatch(r"[0-9a-f]{16,}", store.epoch)
        assert (store.created_new, store.new_reason) == (True, "empty")
        assert store.next_seq("boot-1") == 0  # numbering restarts, but under a new epoch
        assert store.pending(limit=5) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"buffer {path} was empty (0 bytes): starting a new store, epoch {store.epoch}" in warnings


def test_empty_file_next_to_an_old_wal_is_still_a_new_store(tmp_path):
    path = tmp_path / "b.db"
    # A writer killed with part of its store only in the -wal file, then the main file emptied.
    script = ("import os, sys; sys.path.insert(0, sys.argv[2]); from tests.test_buffer import BatchStore, make_batch; "
              "s = BatchStore(sys.argv[1]); s.add(make_batch(0)); s._db.execute('PRAGMA wal_checkpoint(TRUNCATE)'); "
              "s.add(make_batch(1)); print(s.epoch, flush=True); os._exit(0)")
    done = subprocess.run([sys.executable, "-c", script, str(path), str(REPO)], capture_output=True, text=True,
                          check=True, cwd=REPO)
    old = done.stdout.strip()
    assert (tmp_path / "b.db-wal").stat().st_size > 0
    path.write_bytes(b"")
    with BatchStore(path) as store:
        assert store.created_new and store.new_reason == "empty" and store.epoch != old
        assert store.pending(limit=5) == [] and store.counters()["written"] == 0
    with BatchStore(path) as store:  # and it stays that new store
        assert not store.created_new and store.pending(limit=5) == []


def test_replaced_file_gets_a_different_epoch(tmp_path):
    path = tmp_path / "b.db"
    with BatchStore(path) as store:
        old = store.epoch
    for leftover in tmp_path.glob("b.db*"):
        leftover.unlink()
    with BatchStore(path) as store:
        assert store.epoch != old and store.created_new and store.new_reason == "missing"
    other = tmp_path / "copy.db"
    with BatchStore(other) as store:
        third = store.epoch
    path.unlink()
    other.rename(path)  # another store's file moved into place: it keeps its own epoch
    with BatchStore(path) as store:
        assert store.epoch == third and not store.created_new


def test_add_refuses_a_batch_numbered_by_another_store(tmp_path):
    with BatchStore(tmp_path / "b.db") as store:
        with pytest.raises(StoreError, match="numbered by store epoch 00112233aabbccdd, this store is epoch"):
            store.add(make_batch(0, store_epoch="00112233aabbccdd"))
        assert store.counters()["pending_batches"] == 0
        store.add(make_batch(0))  # no store_epoch in the header (older writers): accepted
        assert store.counters()["pending_batches"] == 1


def test_old_store_without_epoch_gets_one_on_first_open(tmp_path, caplog):
    path = tmp_path / "b.db"
    with BatchStore(path) as store:
        store.add(make_batch(0))
        store._db.execute("DELETE FROM meta WHERE key = 'store_epoch'")
    with BatchStore(path, read_only=True) as reader:
        assert reader.epoch == ""  # cannot be given one read-only
    with caplog.at_level(logging.INFO, logger="agent.buffer.store"), BatchStore(path) as store:
        epoch = store.epoch
        assert re.fullmatch(r"[0-9a-f]{16}", epoch) and not store.created_new
        assert [b.seq for b in store.pending(limit=5)] == [0]
    assert any(f"had no store epoch: assigned epoch {epoch}" in r.getMessage() for r in caplog.records)
    with BatchStore(path) as store:
        assert store.epoch == epoch


def test_foreign_sqlite_database_is_refused_not_converted(tmp_path):
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(StoreError, match="not a buffer database"):
        BatchStore(other)
    tables = {r[0] for r in sqlite3.connect(other).execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"t"}
    bare = tmp_path / "bare.db"  # an SQLite header and no table: a crash while the store was being created
    sqlite3.connect(bare).execute("PRAGMA journal_mode=WAL").connection.close()
    assert bare.stat().st_size > 0
    with BatchStore(bare) as store:
        assert store.created_new and store.new_reason == "uninitialised"
