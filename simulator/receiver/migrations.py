"""Versioned schema of the receiver's database, the same steps for SQLite and PostgreSQL.

``schema_migrations (version, applied_at)`` lists the steps applied.  Opening a database runs, in one
migration transaction, every step above its highest version; a database whose version is above
``SCHEMA_VERSION`` (written by newer code) is refused with ``SchemaTooNew`` and left untouched.  On
PostgreSQL the transaction first takes an advisory lock (``pg_advisory_xact_lock``, sql.MIGRATION_LOCK;
DDL is transactional there), so receivers opening an empty database at once migrate it once and all
succeed; on SQLite ``BEGIN IMMEDIATE`` does the same.

Versions (SQLite files older than ``schema_migrations`` carry theirs in ``PRAGMA user_version``, which is
kept equal to the version):

  1  batches keyed (vehicle, boot_id, seq), no payload SHA-256, no conflicts table (SQLite files only)
  2  + store_epoch in the key, payload_sha256, conflicts; no ledger anchors (SQLite files only)
  3  + ledger_anchors, ledger_anchor_conflicts: today's tables (store.py's docstring).  The step creates
     what is missing and moves a version-1 file's rows over (epoch "", payload SHA-256 unknown: "")
"""

from __future__ import annotations

import time
from collections.abc import Callable

from simulator.receiver.anchors import ANCHOR_SCHEMA
from simulator.receiver.sql import Database

SCHEMA_VERSION = 3


class SchemaTooNew(RuntimeError):
    """The database was written by a newer receiver than this one."""


KEY = "vehicle, store_epoch, boot_id, seq"
_KEY_COLUMNS = """
    vehicle {KEYTEXT} NOT NULL,
    store_epoch {KEYTEXT} NOT NULL,
    boot_id {KEYTEXT} NOT NULL,
    seq {INT} NOT NULL"""
SCHEMA_3 = f"""
CREATE TABLE IF NOT EXISTS batches ({_KEY_COLUMNS},
    stream {{KEYTEXT}} NOT NULL,
    stream_seq {{INT}},
    priority {{INT}} NOT NULL,
    categories {{TEXT}} NOT NULL,
    sha256 {{TEXT}} NOT NULL,
    payload_sha256 {{TEXT}} NOT NULL,
    bytes {{INT}} NOT NULL,
    samples {{INT}} NOT NULL,
    t_first {{REAL}},
    t_last {{REAL}},
    closed {{REAL}},
    received {{REAL}} NOT NULL,
    latency {{REAL}},
    consent_version {{TEXT}},
    decoded {{INT}} NOT NULL,
    arrival {{INT}} NOT NULL,
    PRIMARY KEY ({KEY})
);
CREATE TABLE IF NOT EXISTS samples ({{ROWID}}{_KEY_COLUMNS},
    timestamp {{REAL}} NOT NULL,
    bus {{KEYTEXT}} NOT NULL,
    key {{KEYTEXT}} NOT NULL,
    category {{KEYTEXT}} NOT NULL,
    value {{ANY}},
    raw {{RAW}}
);
CREATE INDEX IF NOT EXISTS samples_of_batch ON samples ({KEY});
CREATE TABLE IF NOT EXISTS conflicts (
    id {{ID}},{_KEY_COLUMNS},
    stream {{KEYTEXT}} NOT NULL,
    payload_sha256 {{TEXT}} NOT NULL,
    stored_sha256 {{TEXT}} NOT NULL,
    bytes {{INT}} NOT NULL,
    received {{REAL}} NOT NULL,
    topic {{TEXT}} NOT NULL,
    payload {{BLOB}},
    repeats {{INT}} NOT NULL DEFAULT 1,
    UNIQUE ({KEY}, payload_sha256)
);
CREATE TABLE IF NOT EXISTS corrupt (
    id {{ID}},
    vehicle {{KEYTEXT}},
    topic {{TEXT}} NOT NULL,
    received {{REAL}} NOT NULL,
    bytes {{INT}} NOT NULL,
    reason {{TEXT}} NOT NULL
);
CREATE TABLE IF NOT EXISTS status (
    vehicle {{KEYTEXT}} PRIMARY KEY,
    state {{TEXT}} NOT NULL,
    payload {{TEXT}} NOT NULL,
    received {{REAL}} NOT NULL
);
CREATE TABLE IF NOT EXISTS dictionaries (
    id {{KEYTEXT}} PRIMARY KEY,
    data {{BLOB}} NOT NULL
);
CREATE TABLE IF NOT EXISTS undecoded ({_KEY_COLUMNS},
    dictionary {{KEYTEXT}} NOT NULL,
    payload {{BLOB}} NOT NULL,
    PRIMARY KEY ({KEY})
);
CREATE TABLE IF NOT EXISTS counters (
    name {{KEYTEXT}} PRIMARY KEY,
    value {{INT}} NOT NULL
);
{ANCHOR_SCHEMA}
"""
_MIGRATIONS_TABLE = ("CREATE TABLE IF NOT EXISTS schema_migrations (version {INT} PRIMARY KEY, "
                     "applied_at {REAL} NOT NULL)")
# A version-1 file's tables get the new key with epoch "" (what a batch without store_epoch has) and an
# unknown payload SHA-256 (""): a repeat of such a batch is then judged by its body SHA-256 alone.
_FROM_1 = {
    "batches": "'' AS store_epoch, boot_id, seq, stream, stream_seq, priority, categories, sha256, "
               "'' AS payload_sha256, bytes, samples, t_first, t_last, closed, received, latency, consent_version, "
               "decoded, arrival",
    "samples": "'' AS store_epoch, boot_id, seq, timestamp, bus, key, category, value, raw",
    "undecoded": "'' AS store_epoch, boot_id, seq, dictionary, payload",
}


def _version_1_file(db: Database) -> bool:
    if db.dialect.name != "sqlite":
        return False
    columns = {row[1] for row in db.execute("PRAGMA table_info(batches)")}
    return bool(columns) and "store_epoch" not in columns


def _step_3(db: Database) -> None:
    from_1 = _version_1_file(db)
    if from_1:
        for table in _FROM_1:
            db.execute(f"ALTER TABLE {table} RENAME TO {table}_v1")
        db.execute("DROP INDEX IF EXISTS samples_batch")
    for statement in db.dialect.render(SCHEMA_3):
        db.execute(statement)  # one by one, not executescript: that would commit this transaction half-way
    if from_1:
        for table, select in _FROM_1.items():
            db.execute(f"INSERT INTO {table} SELECT vehicle, {select} FROM {table}_v1")
            db.execute(f"DROP TABLE {table}_v1")


MIGRATIONS: dict[int, Callable[[Database], None]] = {3: _step_3}  # 1 and 2 predate schema_migrations


def current_version(db: Database) -> int:
    """The highest version applied (inside the migration transaction); 0 for an empty database."""
    version = 0
    if db.table_exists("schema_migrations"):
        version = int(db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0])
    if version == 0 and db.dialect.name == "sqlite":
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version == 0 and db.table_exists("batches"):
            version = 1 if _version_1_file(db) else 2
    return version


def migrate(db: Database, clock: Callable[[], float] = time.time) -> int:
    """Bring ``db`` to SCHEMA_VERSION (SchemaTooNew when it is past it); the version it was at."""
    with db.transaction(db.dialect.begin_migration):
        found = current_version(db)
        if found > SCHEMA_VERSION:
            raise SchemaTooNew(f"receiver database {db.location} has schema version {found}, newer than this "
                               f"receiver knows ({SCHEMA_VERSION}): use the receiver that wrote it, or a newer one")
        for statement in db.dialect.render(_MIGRATIONS_TABLE):
            db.execute(statement)
        for version in sorted(MIGRATIONS):  # a step the database had already is recorded as well
            if version > found:
                MIGRATIONS[version](db)
            db.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?) "
                       "ON CONFLICT (version) DO NOTHING", (version, clock()))
        if db.dialect.name == "sqlite":
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return found


__all__ = ["KEY", "MIGRATIONS", "SCHEMA_VERSION", "SchemaTooNew", "current_version", "migrate"]
