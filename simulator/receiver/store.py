"""The reference receiver's SQLite database.

A batch's identity is (vehicle, store_epoch, boot_id, seq) (docs/payload.md, "Batch identity"); batches
without a ``store_epoch`` header (older agents) have the epoch "".  Tables:

  batches   one row per batch identity, with the SHA-256 of its whole payload
  samples   decoded samples of those batches (keyed by the same four fields)
  conflicts payloads that came under an identity already stored with a *different* payload: kept
            aside (payload up to CONFLICT_PAYLOAD_MAX_BYTES each, CONFLICT_PAYLOAD_BUDGET_BYTES in
            all; beyond that only the row), never stored as the batch, never displacing it
  corrupt   payloads that failed verification (hash, format, decode limits), with the reason
  status    last status message per vehicle (online/offline)
  ledger_anchors, ledger_anchor_conflicts
            the latest ledger head each vehicle published (``health.anchor`` of its online status), which
            never goes backwards, and the anchors that would have moved it back (simulator/receiver/anchors.py)
  dictionaries  zstd dictionaries announced by vehicles (id = sha256:<hex of data>)
  undecoded verified batches waiting for their dictionary (payload kept until it comes)
  counters  duplicates, conflicts and received bytes

Whether a batch is new, a duplicate (same identity, same payload SHA-256) or a conflict (same identity,
other payload) is decided by the database in one write transaction, so receivers sharing a file agree.
Written by the MQTT network thread, read by report(); one connection guarded by a lock.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulator.receiver import anchors
from simulator.receiver.anchors import ANCHOR_SCHEMA, Anchor

STORED, DUPLICATE, CONFLICT = "stored", "duplicate", "conflict"
CONFLICT_PAYLOAD_MAX_BYTES = 1024 * 1024  # a conflicting payload larger than this is not kept (its row is)
CONFLICT_PAYLOAD_BUDGET_BYTES = 64 * 1024 * 1024  # conflicting payloads kept in all; later ones: row only
SCHEMA_VERSION = 3  # 1: keyed (vehicle, boot_id, seq), no payload SHA-256, no conflicts table; 2: no anchors

_KEY = "vehicle, store_epoch, boot_id, seq"
_WHERE_KEY = "vehicle=? AND store_epoch=? AND boot_id=? AND seq=?"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS batches (
    vehicle TEXT NOT NULL,
    store_epoch TEXT NOT NULL,
    boot_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    stream TEXT NOT NULL,
    stream_seq INTEGER,
    priority INTEGER NOT NULL,
    categories TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    payload_sha256 TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    t_first REAL,
    t_last REAL,
    closed REAL,
    received REAL NOT NULL,
    latency REAL,
    consent_version TEXT,
    decoded INTEGER NOT NULL,
    arrival INTEGER NOT NULL,
    PRIMARY KEY ({_KEY})
);
CREATE TABLE IF NOT EXISTS samples (
    vehicle TEXT NOT NULL,
    store_epoch TEXT NOT NULL,
    boot_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    timestamp REAL NOT NULL,
    bus TEXT NOT NULL,
    key TEXT NOT NULL,
    category TEXT NOT NULL,
    value,
    raw
);
CREATE INDEX IF NOT EXISTS samples_of_batch ON samples ({_KEY});
CREATE TABLE IF NOT EXISTS conflicts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    vehicle TEXT NOT NULL,
    store_epoch TEXT NOT NULL,
    boot_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    stream TEXT NOT NULL,
    payload_sha256 TEXT NOT NULL,
    stored_sha256 TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    received REAL NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB,
    repeats INTEGER NOT NULL DEFAULT 1,
    UNIQUE ({_KEY}, payload_sha256)
);
CREATE TABLE IF NOT EXISTS corrupt (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    vehicle TEXT,
    topic TEXT NOT NULL,
    received REAL NOT NULL,
    bytes INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS status (
    vehicle TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    payload TEXT NOT NULL,
    received REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dictionaries (
    id TEXT PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS undecoded (
    vehicle TEXT NOT NULL,
    store_epoch TEXT NOT NULL,
    boot_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    dictionary TEXT NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY ({_KEY})
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""
_BATCH_COLUMNS = ("vehicle", "store_epoch", "boot_id", "seq", "stream", "stream_seq", "priority", "categories",
                  "sha256", "payload_sha256", "bytes", "samples", "t_first", "t_last", "closed", "received",
                  "latency", "consent_version", "decoded", "arrival")
_SAMPLE_COLUMNS = "vehicle, store_epoch, boot_id, seq, timestamp, bus, key, category, value, raw"
# Version 1 tables get the new key with epoch "" (what a batch without store_epoch has) and an unknown
# payload SHA-256 (""): a repeat of such a batch is then judged by its body SHA-256 alone.
_MIGRATE_1 = {
    "batches": "'' AS store_epoch, boot_id, seq, stream, stream_seq, priority, categories, sha256, "
               "'' AS payload_sha256, bytes, samples, t_first, t_last, closed, received, latency, consent_version, "
               "decoded, arrival",
    "samples": "'' AS store_epoch, boot_id, seq, timestamp, bus, key, category, value, raw",
    "undecoded": "'' AS store_epoch, boot_id, seq, dictionary, payload",
}


@dataclass(frozen=True)
class BatchRow:
    vehicle: str
    boot_id: str
    seq: int
    stream: str
    stream_seq: int | None
    priority: int
    categories: str
    sha256: str  # the header's: SHA-256 of the compressed body
    bytes: int
    samples: int
    t_first: float | None
    t_last: float | None
    closed: float | None
    received: float
    latency: float | None
    consent_version: str | None
    decoded: bool = True  # False: verified, but the zstd dictionary was missing
    store_epoch: str = ""  # "" for a batch without the header field (older agents)
    payload_sha256: str = ""  # SHA-256 of the whole payload as received: what tells a duplicate from a conflict

    @property
    def key(self) -> tuple[str, str, str, int]:
        return self.vehicle, self.store_epoch, self.boot_id, self.seq


SampleRow = tuple[float, str, str, str, object, object]  # timestamp, bus, key, category, value, raw
BatchKey = tuple[str, str, str, int]  # vehicle, store_epoch, boot_id, seq


class ReceiverStore:
    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL" if self.path != ":memory:" else "PRAGMA journal_mode=MEMORY")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._open_schema()

    def _open_schema(self) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            columns = {row[1] for row in db.execute("PRAGMA table_info(batches)")}
            if columns and "store_epoch" not in columns:
                for table in _MIGRATE_1:
                    db.execute(f"ALTER TABLE {table} RENAME TO {table}_v1")
                db.execute("DROP INDEX IF EXISTS samples_batch")
            for statement in filter(str.strip, (_SCHEMA + ";" + ANCHOR_SCHEMA).split(";")):
                db.execute(statement)  # not executescript: that would commit this transaction half-way
            for table, select in _MIGRATE_1.items():
                if db.execute("SELECT 1 FROM sqlite_master WHERE name=?", (f"{table}_v1",)).fetchone():
                    db.execute(f"INSERT INTO {table} SELECT vehicle, {select} FROM {table}_v1")
                    db.execute(f"DROP TABLE {table}_v1")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _bump(self, name: str, amount: int = 1) -> None:
        self._db.execute("INSERT INTO counters(name, value) VALUES (?, ?) "
                         "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (name, amount))

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name=?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def has_batch(self, vehicle: str, boot_id: str, seq: int, store_epoch: str = "") -> bool:
        with self._lock:
            row = self._db.execute(f"SELECT 1 FROM batches WHERE {_WHERE_KEY}",
                                   (vehicle, store_epoch, boot_id, seq)).fetchone()
        return row is not None

    def add_batch(self, batch: BatchRow, samples: Iterable[SampleRow], *, payload: bytes, topic: str,
                  needs_dictionary: str | None = None) -> str:
        """Store a verified batch and its samples: STORED, DUPLICATE (its identity is stored with the same
        payload SHA-256: counted, dropped) or CONFLICT (stored with another payload: counted, the payload
        kept aside in ``conflicts``, the stored batch untouched).  One write transaction decides, so the
        first payload stored under an identity stays, whoever else writes the file.  ``needs_dictionary``:
        the batch is verified but waits for that zstd dictionary (its payload is kept until it comes)."""
        values = {name: getattr(batch, name, None) for name in _BATCH_COLUMNS}
        values["decoded"] = int(batch.decoded)
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                self._bump("bytes_received", batch.bytes)
                values["arrival"] = db.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
                cursor = db.execute(
                    f"INSERT INTO batches ({', '.join(_BATCH_COLUMNS)}) VALUES ({', '.join('?' * len(values))}) "
                    f"ON CONFLICT ({_KEY}) DO NOTHING", tuple(values[name] for name in _BATCH_COLUMNS))
                if cursor.rowcount == 0:
                    outcome = self._repeat(batch, payload, topic)
                    db.execute("COMMIT")
                    return outcome
                db.executemany(f"INSERT INTO samples ({_SAMPLE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                               ((*batch.key, *sample) for sample in samples))
                if needs_dictionary is not None:
                    db.execute("INSERT OR REPLACE INTO undecoded VALUES (?,?,?,?,?,?)",
                               (*batch.key, needs_dictionary, payload))
                db.execute("COMMIT")
                return STORED
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _repeat(self, batch: BatchRow, payload: bytes, topic: str) -> str:
        """A batch whose identity is stored already (inside add_batch's transaction)."""
        db = self._db
        stored_payload, stored_body = db.execute(f"SELECT payload_sha256, sha256 FROM batches WHERE {_WHERE_KEY}",
                                                 batch.key).fetchone()
        same = stored_payload == batch.payload_sha256 if stored_payload else stored_body == batch.sha256
        if same:
            self._bump("duplicates")
            return DUPLICATE
        self._bump("conflicts")
        repeated = db.execute(f"UPDATE conflicts SET repeats = repeats + 1 WHERE {_WHERE_KEY} AND payload_sha256=?",
                              (*batch.key, batch.payload_sha256))
        if repeated.rowcount:
            return CONFLICT
        kept = len(payload) <= CONFLICT_PAYLOAD_MAX_BYTES and \
            self._counter("conflict_payload_bytes") + len(payload) <= CONFLICT_PAYLOAD_BUDGET_BYTES
        if kept:
            self._bump("conflict_payload_bytes", len(payload))
        db.execute("INSERT INTO conflicts (vehicle, store_epoch, boot_id, seq, stream, payload_sha256, stored_sha256, "
                   "bytes, received, topic, payload) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                   (*batch.key, batch.stream, batch.payload_sha256, stored_payload or f"body:{stored_body}",
                    len(payload), batch.received, topic, payload if kept else None))
        return CONFLICT

    def add_dictionary(self, dictionary_id: str, data: bytes) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO dictionaries VALUES (?, ?)", (dictionary_id, data))

    def dictionaries(self) -> dict[str, bytes]:
        return dict(self.query("SELECT id, data FROM dictionaries"))

    def waiting_for(self, dictionary_id: str) -> list[tuple[BatchKey, str, bytes]]:
        """((vehicle, store_epoch, boot_id, seq), stream, payload) of the batches that need this dictionary."""
        rows = self.query("SELECT u.vehicle, u.store_epoch, u.boot_id, u.seq, b.stream, u.payload FROM undecoded u "
                          "JOIN batches b USING (vehicle, store_epoch, boot_id, seq) WHERE u.dictionary=?",
                          (dictionary_id,))
        return [((vehicle, epoch, boot_id, int(seq)), stream, payload)
                for vehicle, epoch, boot_id, seq, stream, payload in rows]

    def add_late_samples(self, key: BatchKey, samples: Iterable[SampleRow]) -> None:
        """Samples of a batch decoded once its dictionary arrived."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(f"INSERT INTO samples ({_SAMPLE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                               ((*key, *sample) for sample in samples))
                db.execute(f"UPDATE batches SET decoded=1 WHERE {_WHERE_KEY}", key)
                db.execute(f"DELETE FROM undecoded WHERE {_WHERE_KEY}", key)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def reject_late(self, key: BatchKey, topic: str, received: float, reason: str) -> None:
        """A batch kept for its dictionary that does not decode with it: it moves from batches to corrupt."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(f"SELECT bytes FROM batches WHERE {_WHERE_KEY}", key).fetchone()
                db.execute(f"DELETE FROM undecoded WHERE {_WHERE_KEY}", key)
                db.execute(f"DELETE FROM batches WHERE {_WHERE_KEY}", key)
                db.execute("INSERT INTO corrupt(vehicle, topic, received, bytes, reason) VALUES (?,?,?,?,?)",
                           (key[0], topic, received, row[0] if row else 0, reason))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def add_duplicate(self, size: int) -> None:
        with self._lock:
            self._bump("duplicates")
            self._bump("bytes_received", size)

    def add_corrupt(self, vehicle: str | None, topic: str, received: float, size: int, reason: str) -> None:
        with self._lock:
            self._db.execute("INSERT INTO corrupt(vehicle, topic, received, bytes, reason) VALUES (?,?,?,?,?)",
                             (vehicle, topic, received, size, reason))
            self._bump("bytes_received", size)

    def set_status(self, vehicle: str, state: str, payload: str, received: float, anchor: Anchor | None = None,
                   status_time: float | None = None) -> str | None:
        """The vehicle's last status, and with it (one write transaction) the ledger ``anchor`` it carries:
        the outcome of ``anchors.record`` (None without an anchor)."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("INSERT OR REPLACE INTO status VALUES (?,?,?,?)", (vehicle, state, payload, received))
                outcome = None if anchor is None else anchors.record(db, vehicle, anchor, status_time, received)
                db.execute("COMMIT")
                return outcome
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def ledger_anchor(self, vehicle: str) -> dict[str, Any] | None:
        """{"vehicle", "seq", "line_sha256", "signing_key", "status_time", "received"} or None: what
        ``vehicle-agent ledger verify --against`` reads."""
        with self._lock:
            return anchors.anchor_row(self._db, vehicle)

    def ledger_anchor_conflicts(self, vehicle: str | None = None) -> list[dict[str, Any]]:
        """Anchors that would have moved a vehicle's kept anchor back (or changed its key), oldest first."""
        with self._lock:
            return anchors.conflict_rows(self._db, vehicle)

    def bump(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._bump(name, amount)

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def counter(self, name: str) -> int:
        with self._lock:
            return self._counter(name)

    def conflict_count(self) -> int:
        """Payloads received under an identity already stored with another payload (every arrival counts)."""
        return self.counter("conflicts")

    def batch_count(self) -> int:
        return int(self.query("SELECT COUNT(*) FROM batches")[0][0])
