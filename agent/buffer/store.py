"""Durable store-and-forward buffer: SQLite in WAL mode (docs/payload.md, "Durability").

A batch is committed here before the uplink sees it and deleted only when the
uplink confirms delivery (``mark_delivered``).  The store is bounded by a quota
of payload bytes: when over it, batches are evicted lowest priority first, then
oldest (lowest id) first; streams in ``never_evict`` are never evicted (the
store may then exceed its quota, which is counted).  A stream may have a TTL.

Every read checks each row's SHA-256 over the whole payload (stored at
``add``) and that the envelope's header matches the row; a row that fails is
moved to the ``quarantine`` table, counted and skipped, never fatal.

Each store has a random ``epoch`` (agent/buffer/epoch.py): a missing, 0-byte
or replaced buffer file is a new store with a new epoch (logged), and ``add``
refuses a batch whose header names another store's epoch.

All methods are thread-safe: one connection, one lock (the MQTT uplink calls
``mark_delivered`` from paho's network thread).
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from agent.batch.format import BatchError, EncodedBatch
from agent.batch.reading import decode_envelope
from agent.buffer.epoch import open_store_db
from agent.buffer.schema import QUARANTINE_KEEP, SYNCHRONOUS_MODES, StoredBatch, StoreError

log = logging.getLogger(__name__)


def stream_key(boot_id: str, stream: str) -> str:
    # Per-stream counters share the sequences table with the boot-wide one.
    return f"{boot_id}#{stream}"


class BatchStore:
    """See the module docstring.  ``synchronous`` is SQLite's PRAGMA in WAL mode:
    FULL (default) makes every commit survive power loss; NORMAL survives
    process crashes but may lose the last commits on power loss."""

    def __init__(
        self,
        path: str | Path,
        quota_bytes: int = 256 * 1024 * 1024,
        never_evict: Collection[str] = frozenset(),
        ttl_s: Mapping[str, float] | None = None,
        clock: Callable[[], float] = time.time,
        *,
        synchronous: str = "FULL",
        read_only: bool = False,
    ) -> None:
        self.path = Path(path)
        if quota_bytes <= 0:
            raise StoreError(f"{self.path}: quota_bytes must be positive, got {quota_bytes}")
        synchronous = synchronous.upper()
        if synchronous not in SYNCHRONOUS_MODES:
            raise StoreError(f"{self.path}: synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}")
        self.quota_bytes = quota_bytes
        self.never_evict = frozenset(never_evict)
        self.ttl_s = dict(ttl_s or {})
        self.clock = clock
        self.read_only = read_only
        self._lock = threading.Lock()
        self._issued: dict[str, int] = {}
        # Rows that failed a check in read-only mode (cannot be moved): skip them.
        self._bad_ids: set[int] = set()
        opened = open_store_db(self.path, synchronous, read_only)
        self._db = opened.db
        self.epoch: str = opened.epoch  # random per store: batch identity is (store_epoch, boot_id, seq)
        self.created_new: bool = opened.created_new  # the file was missing, empty or never initialised
        self.new_reason: str | None = opened.new_reason  # "missing", "empty", "uninitialised" or None
        self._bytes = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM batches").fetchone()[0]

    # -- writing --------------------------------------------------------------------------
    def add(self, batch: EncodedBatch) -> int:
        """Commit a batch (durable when this returns); returns its row id.  A header carrying a
        ``store_epoch`` other than this store's is refused (it was numbered by another store)."""
        header = batch.header
        foreign = header.get("store_epoch")
        if foreign is not None and foreign != self.epoch:
            raise StoreError(f"{self.path}: batch {header.get('boot_id')}/{header.get('seq')} was numbered by "
                             f"store epoch {foreign}, this store is epoch {self.epoch or '(none)'}")
        digest = hashlib.sha256(batch.payload).digest()
        row = (header["stream"], header["priority"], ",".join(header["categories"]), header["boot_id"],
               header["seq"], self.clock(), header["samples"], len(batch.payload), digest, batch.payload)
        with self._lock:
            self._writable()
            existing = self._db.execute("SELECT id, payload_sha256 FROM batches WHERE boot_id = ? AND seq = ?",
                                        (header["boot_id"], header["seq"])).fetchone()
            if existing is not None:
                if existing[1] != digest:
                    raise StoreError(f"{self.path}: batch {header['boot_id']}/{header['seq']} already stored "
                                     "with different content")
                self._db.execute("UPDATE counters SET value = value + 1 WHERE name = 'duplicates'")
                return existing[0]
            with self._transaction():
                cursor = self._db.execute(
                    "INSERT INTO batches (stream, priority, categories, boot_id, seq, created, samples, size,"
                    " payload_sha256, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
                numbered = [(header["boot_id"], header["seq"] + 1)]
                if header.get("stream_seq") is not None:
                    numbered.append((stream_key(header["boot_id"], header["stream"]), header["stream_seq"] + 1))
                self._db.executemany(
                    "INSERT INTO sequences VALUES (?, ?) ON CONFLICT (boot_id) DO UPDATE"
                    " SET next_seq = MAX(next_seq, excluded.next_seq)", numbered)
                self._count("written")
                self._bytes += len(batch.payload)
                batch_id = int(cursor.lastrowid)
                self._expire_locked()
                self._evict_locked()
            return batch_id

    def next_seq(self, boot_id: str) -> int:
        """The next sequence number for ``boot_id``: above every committed one and
        every one handed out by this process, so (boot_id, seq) is never reused."""
        with self._lock:
            stored = self._db.execute("SELECT next_seq FROM sequences WHERE boot_id = ?", (boot_id,)).fetchone()
            seq = max(stored[0] if stored else 0, self._issued.get(boot_id, -1) + 1)
            self._issued[boot_id] = seq
            return seq

    def next_stream_seq(self, boot_id: str, stream: str) -> int:
        """The next number of ``stream`` in this boot: per-stream numbering lets a receiver
        find holes per stream (the boot-wide ``seq`` is shared by all streams)."""
        return self.next_seq(stream_key(boot_id, stream))

    def mark_delivered(self, batch_id: int) -> None:
        """The uplink confirmed delivery: delete the batch (unknown ids are ignored)."""
        with self._lock:
            self._writable()
            with self._transaction():
                size = self._delete(batch_id)
                if size is not None:
                    self._count("delivered")

    def purge_ids(self, ids: Collection[int]) -> list[int]:
        """Delete these unsent batches (refused at the last consent check); returns the ids deleted."""
        with self._lock:
            self._writable()
            with self._transaction():
                deleted = [batch_id for batch_id in sorted(set(ids)) if self._delete(batch_id) is not None]
                if deleted:
                    self._count("purged", len(deleted))
            return deleted

    def purge(self, categories: Collection[str] | Callable[[StoredBatch], bool] | None = None,
              predicate: Callable[[StoredBatch], bool] | None = None) -> list[int]:
        """Delete unsent batches whose categories intersect ``categories`` and/or
        for which ``predicate(batch)`` is true (consent revocation); returns their ids.
        A callable given as the first argument is taken as the predicate."""
        if callable(categories):
            categories, predicate = None, categories
        if categories is None and predicate is None:
            raise StoreError("purge needs categories or a predicate")
        wanted = set(categories or ())
        with self._lock:
            self._writable()
            doomed = []
            for batch_id, cats in self._db.execute("SELECT id, categories FROM batches ORDER BY id").fetchall():
                if wanted and wanted.intersection(cats.split(",")):
                    doomed.append(batch_id)
                elif predicate is not None:
                    stored = self._read(batch_id)
                    if stored is not None and predicate(stored):
                        doomed.append(batch_id)
            with self._transaction():
                for batch_id in doomed:
                    if self._delete(batch_id) is not None:
                        self._count("purged")
            return doomed

    def unsent_with(self, category: str) -> int:
        """How many unsent batches hold ``category`` (what a revocation of it would purge)."""
        with self._lock:
            rows = self._db.execute("SELECT categories FROM batches").fetchall()
        return sum(1 for (cats,) in rows if category in cats.split(","))

    def expire(self) -> int:
        """Delete batches older than their stream's TTL; returns how many."""
        with self._lock:
            self._writable()
            with self._transaction():
                return self._expire_locked()

    # -- reading -------------------------------------------------------------------------
    def pending(self, limit: int, exclude: Collection[int] = ()) -> list[StoredBatch]:
        """Up to ``limit`` batches to send: highest priority first, then oldest.
        Rows failing the integrity check are quarantined and skipped."""
        excluded = set(exclude)
        out: list[StoredBatch] = []
        with self._lock:
            if not self.read_only and self.ttl_s and self._expired_ids():  # write only when needed
                with self._transaction():
                    self._expire_locked()
            after = None
            while len(out) < limit:
                # Page through ids so a quarantined row never stops the scan.
                ids = self._ids_page(after)
                if not ids:
                    break
                for batch_id, priority in ids:
                    after = (priority, batch_id)
                    if batch_id in excluded or batch_id in self._bad_ids:
                        continue
                    stored = self._read(batch_id)
                    if stored is not None:
                        out.append(stored)
                        if len(out) >= limit:
                            break
        return out

    def _ids_page(self, after: tuple[int, int] | None) -> list[tuple[int, int]]:
        if after is None:
            sql, args = "SELECT id, priority FROM batches ORDER BY priority DESC, id LIMIT 256", ()
        else:
            sql = ("SELECT id, priority FROM batches WHERE priority < ? OR (priority = ? AND id > ?)"
                   " ORDER BY priority DESC, id LIMIT 256")
            args = (after[0], after[0], after[1])
        return self._db.execute(sql, args).fetchall()

    def _read(self, batch_id: int) -> StoredBatch | None:
        try:
            row = self._db.execute(
                "SELECT stream, priority, categories, boot_id, seq, created, payload_sha256, payload"
                " FROM batches WHERE id = ?", (batch_id,)).fetchone()
        except sqlite3.DatabaseError as exc:  # a damaged page: SQLite itself cannot read the row
            self._quarantine(batch_id, None, f"unreadable row: {exc}", None)
            return None
        if row is None:
            return None
        stream, priority, categories, boot_id, seq, created, digest, payload = row
        problem = None
        header: dict = {}
        if not isinstance(payload, bytes) or hashlib.sha256(payload).digest() != digest:
            problem = "payload SHA-256 does not match the one stored at commit"
        else:
            try:
                header, _ = decode_envelope(payload)
            except BatchError as exc:
                problem = str(exc)
            else:
                if (header.get("boot_id"), header.get("seq"), header.get("stream")) != (boot_id, seq, stream):
                    problem = "row columns do not match the batch header"
        if problem is not None:
            self._quarantine(batch_id, stream, problem, payload if isinstance(payload, bytes) else None)
            return None
        return StoredBatch(batch_id, stream, priority, tuple(categories.split(",")) if categories else (), payload,
                           header["sha256"], boot_id, seq, created, header)

    def get(self, batch_id: int) -> StoredBatch | None:
        """One batch by id (integrity-checked), or None."""
        with self._lock:
            return None if batch_id in self._bad_ids else self._read(batch_id)

    def counters(self) -> dict[str, int]:
        with self._lock:
            counts = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
            counts["pending_batches"] = self._db.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
            counts["pending_bytes"] = self._bytes
            return counts

    def backlog(self) -> list[dict]:
        """Per stream: batches, samples, payload bytes, oldest commit time and age."""
        now = self.clock()
        with self._lock:
            rows = self._db.execute(
                "SELECT stream, COUNT(*), SUM(samples), SUM(size), MIN(created), MAX(priority) FROM batches"
                " GROUP BY stream ORDER BY stream").fetchall()
        return [{"stream": stream, "batches": count, "samples": samples, "bytes": size, "oldest_created": oldest,
                 "oldest_age_s": max(0.0, now - oldest), "priority": priority,
                 "never_evict": stream in self.never_evict, "ttl_s": self.ttl_s.get(stream)}
                for stream, count, samples, size, oldest, priority in rows]

    def quarantined(self) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT batch_id, stream, reason, quarantined FROM quarantine ORDER BY id")
            return [{"batch_id": b, "stream": s, "reason": r, "quarantined": q} for b, s, r, q in rows.fetchall()]

    def put_dictionary(self, dictionary_id: str, data: bytes) -> None:
        with self._lock:
            self._writable()
            self._db.execute("INSERT OR IGNORE INTO dictionaries VALUES (?, ?)", (dictionary_id, data))

    def dictionaries(self) -> dict[str, bytes]:
        with self._lock:
            return dict(self._db.execute("SELECT id, data FROM dictionaries").fetchall())

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> BatchStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals (lock held) -----------------------------------------------------------------
    def _writable(self) -> None:
        if self.read_only:
            raise StoreError(f"{self.path}: opened read-only")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT; on any error (COMMIT's included) ROLLBACK and re-read the
        byte total (the in-memory total was adjusted as rows were added or deleted)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            # Inside the try: COMMIT itself fails on a full disk ("database or disk is full").
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # SQLite may already have rolled back on its own
                self._db.execute("ROLLBACK")
            self._bytes = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM batches").fetchone()[0]
            raise

    def _count(self, name: str, amount: int = 1) -> None:
        self._db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (amount, name))

    def _delete(self, batch_id: int) -> int | None:
        row = self._db.execute("SELECT size FROM batches WHERE id = ?", (batch_id,)).fetchone()
        if row is None:
            return None
        self._db.execute("DELETE FROM batches WHERE id = ?", (batch_id,))
        self._bytes -= row[0]
        return row[0]

    def _expired_ids(self) -> list[int]:
        now = self.clock()
        ids: list[int] = []
        for stream, ttl in self.ttl_s.items():
            ids.extend(r[0] for r in self._db.execute("SELECT id FROM batches WHERE stream = ? AND created < ?",
                                                      (stream, now - ttl)).fetchall())
        return ids

    def _expire_locked(self) -> int:
        expired = sum(1 for batch_id in self._expired_ids() if self._delete(batch_id) is not None)
        if expired:
            self._count("expired", expired)
        return expired

    def _evict_locked(self) -> None:
        if self._bytes <= self.quota_bytes:
            return
        candidates = self._db.execute(
            f"SELECT id FROM batches WHERE stream NOT IN ({','.join('?' * len(self.never_evict))})"
            " ORDER BY priority ASC, id ASC", tuple(self.never_evict)).fetchall()
        evicted = 0
        for (batch_id,) in candidates:
            if self._bytes <= self.quota_bytes:
                break
            if self._delete(batch_id) is not None:
                evicted += 1
        if evicted:
            self._count("evicted", evicted)
        if self._bytes > self.quota_bytes:
            self._count("over_quota")
            log.warning("%s: %d bytes of never-evict batches exceed the %d byte quota", self.path, self._bytes,
                        self.quota_bytes)

    def _quarantine(self, batch_id: int, stream: str | None, reason: str, payload: bytes | None) -> None:
        log.warning("%s: batch %s quarantined: %s", self.path, batch_id, reason)
        self._bad_ids.add(batch_id)
        if self.read_only:
            return
        try:
            with self._transaction():
                size = self._db.execute("SELECT size FROM batches WHERE id = ?", (batch_id,)).fetchone()
                self._db.execute("DELETE FROM batches WHERE id = ?", (batch_id,))
                if size is not None:
                    self._bytes -= size[0]
                self._db.execute("INSERT INTO quarantine (batch_id, stream, reason, quarantined, payload)"
                                 " VALUES (?, ?, ?, ?, ?)", (batch_id, stream, reason, self.clock(), payload))
                self._db.execute("DELETE FROM quarantine WHERE id <= (SELECT MAX(id) FROM quarantine) - ?",
                                 (QUARANTINE_KEEP,))
                self._count("quarantined")
        except sqlite3.DatabaseError as exc:  # the damage may block the delete too: keep skipping it
            log.warning("%s: could not move batch %s to quarantine: %s", self.path, batch_id, exc)
