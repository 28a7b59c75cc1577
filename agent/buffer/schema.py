"""The buffer's SQLite schema and row type (kept apart from the store's logic)."""

from __future__ import annotations

from dataclasses import dataclass

STORE_SCHEMA = 1
SYNCHRONOUS_MODES = ("NORMAL", "FULL", "EXTRA")
COUNTERS = ("written", "delivered", "evicted", "expired", "quarantined", "purged", "over_quota", "duplicates")
# Quarantined payloads are kept for forensics, but only the most recent ones.
QUARANTINE_KEEP = 64
# meta key of the store's random epoch (agent/buffer/epoch.py).
EPOCH_KEY = "store_epoch"

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    priority INTEGER NOT NULL,
    categories TEXT NOT NULL,
    boot_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    created REAL NOT NULL,
    samples INTEGER NOT NULL,
    size INTEGER NOT NULL,
    payload_sha256 BLOB NOT NULL,
    payload BLOB NOT NULL,
    UNIQUE (boot_id, seq)
);
CREATE INDEX IF NOT EXISTS batches_send_order ON batches (priority DESC, id);
CREATE INDEX IF NOT EXISTS batches_stream ON batches (stream, id);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id INTEGER, stream TEXT, reason TEXT NOT NULL, quarantined REAL NOT NULL, payload BLOB
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sequences (boot_id TEXT PRIMARY KEY, next_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS dictionaries (id TEXT PRIMARY KEY, data BLOB NOT NULL);
"""


class StoreError(ValueError):
    """The store cannot be opened or used as asked; the message names the file."""


@dataclass(frozen=True, slots=True)
class StoredBatch:
    id: int
    stream: str
    priority: int
    categories: tuple[str, ...]
    payload: bytes
    sha256: str  # the header's SHA-256 of the body: what the receiver verifies
    boot_id: str
    seq: int
    created: float
    header: dict
