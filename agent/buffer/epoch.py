"""Opening the buffer database, and its store epoch.

The sequence counters live inside the buffer file, so a buffer file that is
replaced, deleted or truncated to 0 bytes (SQLite silently takes an empty file
as a new database) restarts ``seq`` in the same boot.  Each store therefore
gets a random *epoch* when it is created, kept in ``meta`` (``store_epoch``)
and carried in every batch header: ``(store_epoch, boot_id, seq)`` never
repeats.  A new store is always said in the log, never a silent reuse.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from agent.buffer.schema import COUNTERS, EPOCH_KEY, SCHEMA_SQL, STORE_SCHEMA, StoreError

log = logging.getLogger("agent.buffer.store")

# Why a store is new (BatchStore.new_reason).
NEW_MISSING = "missing"  # no buffer file
NEW_EMPTY = "empty"  # a 0-byte file
NEW_UNINITIALISED = "uninitialised"  # an SQLite file without any table (a crash while it was being created)


def new_epoch() -> str:
    """16 random hex digits."""
    return secrets.token_hex(8)


@dataclass(frozen=True)
class OpenedStore:
    db: sqlite3.Connection
    epoch: str  # "" only for an old store opened read-only (it has none and cannot be given one)
    created_new: bool
    new_reason: str | None


def _probe(path: Path) -> str | None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return NEW_MISSING
    return NEW_EMPTY if size == 0 else None


def _tables(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()}


def _stored_epoch(db: sqlite3.Connection) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (EPOCH_KEY,)).fetchone()
    return str(row[0]) if row and row[0] else None


def _not_a_buffer(path: Path) -> StoreError:
    return StoreError(f"{path}: not a buffer database of schema {STORE_SCHEMA}")


def open_store_db(path: Path, synchronous: str, read_only: bool) -> OpenedStore:
    """Connect, create the schema (one transaction) when the file is new, and find or assign the epoch."""
    db = None
    try:
        if read_only:
            if not path.is_file():
                raise StoreError(f"{path}: no such buffer database")
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False,
                                 isolation_level=None)
            tables, reason = _tables(db), None
        else:
            reason = _probe(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={synchronous}")
            tables = _tables(db)
            if tables and "meta" not in tables:  # somebody else's database: never turn it into a buffer
                raise _not_a_buffer(path)
            if not tables and reason is None:
                reason = NEW_UNINITIALISED
            counters = " ".join(f"INSERT OR IGNORE INTO counters VALUES ('{name}', 0);" for name in COUNTERS)
            # One transaction: a crash while creating leaves no half-made store behind.
            db.executescript(f"BEGIN IMMEDIATE; {SCHEMA_SQL}"
                             f" INSERT OR IGNORE INTO meta VALUES ('store_schema', '{STORE_SCHEMA}'); {counters}"
                             " COMMIT;")
            tables = _tables(db)
        version = db.execute("SELECT value FROM meta WHERE key = 'store_schema'").fetchone() \
            if "meta" in tables else None
        if version is None or version[0] != str(STORE_SCHEMA):
            raise _not_a_buffer(path)
        epoch = _stored_epoch(db)
        created_new = False
        if epoch is None and not read_only:
            candidate = new_epoch()
            db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (EPOCH_KEY, candidate))
            epoch = _stored_epoch(db) or candidate
            created_new = reason is not None and epoch == candidate
            if not created_new:
                log.info("buffer %s had no store epoch: assigned epoch %s", path, epoch)
    except sqlite3.DatabaseError as exc:
        if db is not None:
            db.close()
        # Chained: a locked, full or failing database is a transient failure (exit 75), not a bad config.
        raise StoreError(f"{path}: cannot open buffer database: {exc}") from exc
    except BaseException:
        if db is not None:
            db.close()
        raise
    if created_new:
        if reason == NEW_MISSING:
            log.info("buffer %s did not exist: starting a new store, epoch %s", path, epoch)
        elif reason == NEW_EMPTY:
            log.warning("buffer %s was empty (0 bytes): starting a new store, epoch %s", path, epoch)
        else:
            log.warning("buffer %s was an SQLite file without tables: starting a new store, epoch %s", path, epoch)
    return OpenedStore(db, epoch or "", created_new, reason if created_new else None)


__all__ = ["NEW_EMPTY", "NEW_MISSING", "NEW_UNINITIALISED", "OpenedStore", "new_epoch", "open_store_db"]
