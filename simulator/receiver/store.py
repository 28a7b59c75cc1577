"""The reference receiver's database: SQLite (embedded, the default) or PostgreSQL (``postgresql://`` URL).

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
other payload) is decided by the database in one write transaction, so receivers sharing a database (a
file, or one PostgreSQL database) agree.  The SQL is written once: simulator/receiver/sql.py covers what the
two databases do differently, simulator/receiver/migrations.py the versioned schema.  Written by the MQTT
network thread, read by report(); one connection guarded by a lock.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulator.receiver import anchors
from simulator.receiver.anchors import Anchor
from simulator.receiver.migrations import KEY, SCHEMA_VERSION, SchemaTooNew, migrate
from simulator.receiver.sql import Database, connect, upsert

STORED, DUPLICATE, CONFLICT = "stored", "duplicate", "conflict"
CONFLICT_PAYLOAD_MAX_BYTES = 1024 * 1024  # a conflicting payload larger than this is not kept (its row is)
CONFLICT_PAYLOAD_BUDGET_BYTES = 64 * 1024 * 1024  # conflicting payloads kept in all; later ones: row only

_KEY = KEY
_WHERE_KEY = "vehicle=? AND store_epoch=? AND boot_id=? AND seq=?"
_BATCH_COLUMNS = ("vehicle", "store_epoch", "boot_id", "seq", "stream", "stream_seq", "priority", "categories",
                  "sha256", "payload_sha256", "bytes", "samples", "t_first", "t_last", "closed", "received",
                  "latency", "consent_version", "decoded", "arrival")
_SAMPLE_COLUMNS = ("vehicle", "store_epoch", "boot_id", "seq", "timestamp", "bus", "key", "category", "value", "raw")
_CONFLICT_COLUMNS = ("vehicle", "store_epoch", "boot_id", "seq", "stream", "payload_sha256", "stored_sha256",
                     "bytes", "received", "topic", "payload")
_STATUS_UPSERT = upsert("status", ("vehicle", "state", "payload", "received"), ("vehicle",))
_UNDECODED_UPSERT = upsert("undecoded", (*_SAMPLE_COLUMNS[:4], "dictionary", "payload"), _SAMPLE_COLUMNS[:4])


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
    """The receiver's tables in one database: ``db`` a SQLite path (``:memory:`` by default) or a
    ``postgresql://`` URL.  Opening migrates the schema (simulator/receiver/migrations.py)."""

    def __init__(self, db: str | Path = ":memory:") -> None:
        self.path = str(db)  # as given (a URL may carry a password: ``location`` is the one to show)
        self._sql = connect(db)
        try:
            migrate(self._sql)
        except BaseException:
            self._sql.close()
            raise
        self._lock = self._sql.lock

    @property
    def location(self) -> str:
        """The database for people: an absolute SQLite path (or ``:memory:``), a URL without password."""
        if self._sql.dialect.name == "sqlite" and self.path != ":memory:":
            return os.path.abspath(self.path)
        return self._sql.location

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._sql.dialect.name

    def close(self) -> None:
        self._sql.close()

    def _bump(self, name: str, amount: int = 1) -> None:
        self._sql.execute("INSERT INTO counters(name, value) VALUES (?, ?) "
                          "ON CONFLICT(name) DO UPDATE SET value = counters.value + excluded.value", (name, amount))

    def _counter(self, name: str) -> int:
        row = self._sql.execute("SELECT value FROM counters WHERE name=?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def has_batch(self, vehicle: str, boot_id: str, seq: int, store_epoch: str = "") -> bool:
        return bool(self.query(f"SELECT 1 FROM batches WHERE {_WHERE_KEY}", (vehicle, store_epoch, boot_id, seq)))

    def add_batch(self, batch: BatchRow, samples: Iterable[SampleRow], *, payload: bytes, topic: str,
                  needs_dictionary: str | None = None) -> str:
        """Store a verified batch and its samples: STORED, DUPLICATE (its identity is stored with the same
        payload SHA-256: counted, dropped) or CONFLICT (stored with another payload: counted, the payload
        kept aside in ``conflicts``, the stored batch untouched).  One write transaction decides (the
        primary key on the identity, INSERT ... ON CONFLICT DO NOTHING, then what is there), so the first
        payload stored under an identity stays, whoever else writes the database.  The samples go in
        with it, in one executemany (SQLite) or COPY (PostgreSQL).  ``needs_dictionary``: the batch is
        verified but waits for that zstd dictionary (its payload is kept until it comes)."""
        values = {name: getattr(batch, name, None) for name in _BATCH_COLUMNS}
        values["decoded"] = int(batch.decoded)
        with self._sql.write() as db:
            self._bump("bytes_received", batch.bytes)
            values["arrival"] = db.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
            cursor = db.execute(
                f"INSERT INTO batches ({', '.join(_BATCH_COLUMNS)}) VALUES ({', '.join('?' * len(values))}) "
                f"ON CONFLICT ({_KEY}) DO NOTHING", tuple(values[name] for name in _BATCH_COLUMNS))
            if cursor.rowcount == 0:
                return self._repeat(batch, payload, topic)
            db.insert_many("samples", _SAMPLE_COLUMNS, ((*batch.key, *sample) for sample in samples))
            if needs_dictionary is not None:
                db.execute(_UNDECODED_UPSERT, (*batch.key, needs_dictionary, payload))
            return STORED

    def _repeat(self, batch: BatchRow, payload: bytes, topic: str) -> str:
        """A batch whose identity is stored already (inside add_batch's transaction)."""
        db = self._sql
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
        db.execute(f"INSERT INTO conflicts ({', '.join(_CONFLICT_COLUMNS)}) VALUES "
                   f"({', '.join('?' * len(_CONFLICT_COLUMNS))})",
                   (*batch.key, batch.stream, batch.payload_sha256, stored_payload or f"body:{stored_body}",
                    len(payload), batch.received, topic, payload if kept else None))
        return CONFLICT

    def add_dictionary(self, dictionary_id: str, data: bytes) -> None:
        with self._sql.write() as db:
            db.execute("INSERT INTO dictionaries (id, data) VALUES (?, ?) ON CONFLICT DO NOTHING",
                       (dictionary_id, data))

    def dictionaries(self) -> dict[str, bytes]:
        return {name: bytes(data) for name, data in self.query("SELECT id, data FROM dictionaries")}

    def waiting_for(self, dictionary_id: str) -> list[tuple[BatchKey, str, bytes]]:
        """((vehicle, store_epoch, boot_id, seq), stream, payload) of the batches that need this dictionary."""
        rows = self.query("SELECT u.vehicle, u.store_epoch, u.boot_id, u.seq, b.stream, u.payload FROM undecoded u "
                          "JOIN batches b USING (vehicle, store_epoch, boot_id, seq) WHERE u.dictionary=?",
                          (dictionary_id,))
        return [((vehicle, epoch, boot_id, int(seq)), stream, bytes(payload))
                for vehicle, epoch, boot_id, seq, stream, payload in rows]

    def add_late_samples(self, key: BatchKey, samples: Iterable[SampleRow]) -> None:
        """Samples of a batch decoded once its dictionary arrived."""
        with self._sql.write() as db:
            db.insert_many("samples", _SAMPLE_COLUMNS, ((*key, *sample) for sample in samples))
            db.execute(f"UPDATE batches SET decoded=1 WHERE {_WHERE_KEY}", key)
            db.execute(f"DELETE FROM undecoded WHERE {_WHERE_KEY}", key)

    def reject_late(self, key: BatchKey, topic: str, received: float, reason: str) -> None:
        """A batch kept for its dictionary that does not decode with it: it moves from batches to corrupt."""
        with self._sql.write() as db:
            row = db.execute(f"SELECT bytes FROM batches WHERE {_WHERE_KEY}", key).fetchone()
            db.execute(f"DELETE FROM undecoded WHERE {_WHERE_KEY}", key)
            db.execute(f"DELETE FROM batches WHERE {_WHERE_KEY}", key)
            db.execute("INSERT INTO corrupt(vehicle, topic, received, bytes, reason) VALUES (?,?,?,?,?)",
                       (key[0], topic, received, row[0] if row else 0, reason))

    def add_duplicate(self, size: int) -> None:
        with self._sql.write():
            self._bump("duplicates")
            self._bump("bytes_received", size)

    def add_corrupt(self, vehicle: str | None, topic: str, received: float, size: int, reason: str) -> None:
        with self._sql.write() as db:
            db.execute("INSERT INTO corrupt(vehicle, topic, received, bytes, reason) VALUES (?,?,?,?,?)",
                       (vehicle, topic, received, size, reason))
            self._bump("bytes_received", size)

    def set_status(self, vehicle: str, state: str, payload: str, received: float, anchor: Anchor | None = None,
                   status_time: float | None = None) -> str | None:
        """The vehicle's last status, and with it (one write transaction) the ledger ``anchor`` it carries:
        the outcome of ``anchors.record`` (None without an anchor)."""
        with self._sql.write() as db:
            db.execute(_STATUS_UPSERT, (vehicle, state, payload, received))
            return None if anchor is None else anchors.record(db, vehicle, anchor, status_time, received)

    def ledger_anchor(self, vehicle: str) -> dict[str, Any] | None:
        """{"vehicle", "seq", "line_sha256", "signing_key", "status_time", "received"} or None: what
        ``vehicle-agent ledger verify --against`` reads."""
        with self._lock:
            return anchors.anchor_row(self._sql, vehicle)

    def ledger_anchor_conflicts(self, vehicle: str | None = None) -> list[dict[str, Any]]:
        """Anchors that would have moved a vehicle's kept anchor back (or changed its key), oldest first."""
        with self._lock:
            return anchors.conflict_rows(self._sql, vehicle)

    def bump(self, name: str, amount: int = 1) -> None:
        with self._sql.write():
            self._bump(name, amount)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Rows of one statement written with ``?`` placeholders (either database)."""
        with self._lock:
            cursor = self._sql.execute(sql, params)
            return [] if cursor.description is None else [tuple(row) for row in cursor.fetchall()]

    @contextmanager
    def snapshot(self) -> Iterator[Database]:
        """One read transaction (the store's connection held): every query sees the same database state.
        ``execute`` and ``iterate`` of what it yields take ``?`` placeholders too."""
        with self._sql.read() as db:
            yield db

    def counter(self, name: str) -> int:
        with self._lock:
            return self._counter(name)

    def conflict_count(self) -> int:
        """Payloads received under an identity already stored with another payload (every arrival counts)."""
        return self.counter("conflicts")

    def batch_count(self) -> int:
        return int(self.query("SELECT COUNT(*) FROM batches")[0][0])


def open_receiver_store(db: str | Path = ":memory:") -> ReceiverStore:
    """The receiver's store on ``db``: a ``postgresql://``/``postgres://`` URL, or a SQLite path (the embedded
    default; ``:memory:`` in memory).  Migrates the schema; SchemaTooNew for a database of newer code."""
    return ReceiverStore(db)


__all__ = ["CONFLICT", "CONFLICT_PAYLOAD_BUDGET_BYTES", "CONFLICT_PAYLOAD_MAX_BYTES", "DUPLICATE", "SCHEMA_VERSION",
           "STORED", "BatchKey", "BatchRow", "ReceiverStore", "SampleRow", "SchemaTooNew", "open_receiver_store"]
