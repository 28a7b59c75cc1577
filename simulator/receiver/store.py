"""The reference receiver's SQLite database.

Tables:
  batches   one row per unique batch, keyed (vehicle, boot_id, seq): the dedup key
  samples   decoded samples of those batches
  corrupt   payloads that failed verification (hash, format), with the reason
  status    last status message per vehicle (online/offline)
  dictionaries  zstd dictionaries announced by vehicles (id = sha256:<hex of data>)
  undecoded verified batches waiting for their dictionary (payload kept until it comes)
  counters  duplicates and received bytes, which have no row of their own

Written by the MQTT network thread, read by report(); one connection guarded by a lock.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    vehicle TEXT NOT NULL,
    boot_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    stream TEXT NOT NULL,
    stream_seq INTEGER,
    priority INTEGER NOT NULL,
    categories TEXT NOT NULL,
    sha256 TEXT NOT NULL,
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
    PRIMARY KEY (vehicle, boot_id, seq)
);
CREATE TABLE IF NOT EXISTS samples (
    vehicle TEXT NOT NULL,
    boot_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    timestamp REAL NOT NULL,
    bus TEXT NOT NULL,
    key TEXT NOT NULL,
    category TEXT NOT NULL,
    value,
    raw
);
CREATE INDEX IF NOT EXISTS samples_batch ON samples (vehicle, boot_id, seq);
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
    boot_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    dictionary TEXT NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (vehicle, boot_id, seq)
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class BatchRow:
    vehicle: str
    boot_id: str
    seq: int
    stream: str
    stream_seq: int | None
    priority: int
    categories: str
    sha256: str
    bytes: int
    samples: int
    t_first: float | None
    t_last: float | None
    closed: float | None
    received: float
    latency: float | None
    consent_version: str | None
    decoded: bool = True  # False: verified, but the zstd dictionary was missing


SampleRow = tuple[float, str, str, str, object, object]  # timestamp, bus, key, category, value, raw


class ReceiverStore:
    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL" if self.path != ":memory:" else "PRAGMA journal_mode=MEMORY")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _bump(self, name: str, amount: int = 1) -> None:
        self._db.execute("INSERT INTO counters(name, value) VALUES (?, ?) "
                         "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (name, amount))

    def has_batch(self, vehicle: str, boot_id: str, seq: int) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM batches WHERE vehicle=? AND boot_id=? AND seq=?",
                                   (vehicle, boot_id, seq)).fetchone()
        return row is not None

    def add_batch(self, batch: BatchRow, samples: Iterable[SampleRow], undecoded: tuple[str, bytes] | None = None
                  ) -> bool:
        """Store a verified batch and its samples in one transaction; False for a duplicate.
        ``undecoded`` = (dictionary id, payload) for a batch whose dictionary has not come yet."""
        with self._lock:
            db = self._db
            db.execute("BEGIN")
            try:
                self._bump("bytes_received", batch.bytes)
                arrival = db.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
                cursor = db.execute(
                    "INSERT OR IGNORE INTO batches VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (batch.vehicle, batch.boot_id, batch.seq, batch.stream, batch.stream_seq, batch.priority,
                     batch.categories, batch.sha256, batch.bytes, batch.samples, batch.t_first, batch.t_last,
                     batch.closed, batch.received, batch.latency, batch.consent_version, int(batch.decoded),
                     arrival))
                if cursor.rowcount == 0:
                    self._bump("duplicates")
                    db.execute("COMMIT")
                    return False
                db.executemany("INSERT INTO samples VALUES (?,?,?,?,?,?,?,?,?)",
                               ((batch.vehicle, batch.boot_id, batch.seq, *sample) for sample in samples))
                if undecoded is not None:
                    db.execute("INSERT OR REPLACE INTO undecoded VALUES (?,?,?,?,?)",
                               (batch.vehicle, batch.boot_id, batch.seq, *undecoded))
                db.execute("COMMIT")
                return True
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def add_dictionary(self, dictionary_id: str, data: bytes) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO dictionaries VALUES (?, ?)", (dictionary_id, data))

    def dictionaries(self) -> dict[str, bytes]:
        return dict(self.query("SELECT id, data FROM dictionaries"))

    def waiting_for(self, dictionary_id: str) -> list[tuple[str, str, int, bytes]]:
        """(vehicle, boot_id, seq, payload) of batches that need this dictionary."""
        return self.query("SELECT vehicle, boot_id, seq, payload FROM undecoded WHERE dictionary=?",
                          (dictionary_id,))

    def add_late_samples(self, vehicle: str, boot_id: str, seq: int, samples: Iterable[SampleRow]) -> None:
        """Samples of a batch decoded once its dictionary arrived."""
        with self._lock:
            db = self._db
            db.execute("BEGIN")
            try:
                db.executemany("INSERT INTO samples VALUES (?,?,?,?,?,?,?,?,?)",
                               ((vehicle, boot_id, seq, *sample) for sample in samples))
                db.execute("UPDATE batches SET decoded=1 WHERE vehicle=? AND boot_id=? AND seq=?",
                           (vehicle, boot_id, seq))
                db.execute("DELETE FROM undecoded WHERE vehicle=? AND boot_id=? AND seq=?", (vehicle, boot_id, seq))
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

    def set_status(self, vehicle: str, state: str, payload: str, received: float) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO status VALUES (?,?,?,?)", (vehicle, state, payload, received))

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def counter(self, name: str) -> int:
        rows = self.query("SELECT value FROM counters WHERE name=?", (name,))
        return int(rows[0][0]) if rows else 0

    def batch_count(self) -> int:
        return int(self.query("SELECT COUNT(*) FROM batches")[0][0])
