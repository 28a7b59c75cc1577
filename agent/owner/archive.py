"""The owner archive: the owner's own trips, signals and positions, in one SQLite file in the car.

Nothing here is ever uploaded; the file is owner-only (mode 0600).  Signals are
kept at a reduced rate (the recorder decides), positions at full precision.
Old trips leave by age (``retention_days``, by a trip's end time) and, when the
file grows past ``max_bytes``, oldest first; ``forget()`` empties the archive
and rewrites the file so no deleted row survives in it.

One connection, guarded by a lock: the recorder writes from the pipeline thread
while the owner's page reads from another.  Signal names are stored once (table
``signal_keys``); the ``samples.key`` column refers to them.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

DAY = 86400.0
MIN_RETENTION_DAYS, MAX_RETENTION_DAYS = 1, 365
MIN_MAX_BYTES = 1_000_000
WAL_PAGES = 128

_SCHEMA = """
CREATE TABLE IF NOT EXISTS owner_limits (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    retention_days REAL NOT NULL,
    max_bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS trips (
    id INTEGER PRIMARY KEY,
    start REAL NOT NULL,
    "end" REAL NOT NULL,
    distance_km REAL NOT NULL DEFAULT 0,
    max_speed_kmh REAL NOT NULL DEFAULT 0,
    mean_speed_kmh REAL NOT NULL DEFAULT 0,
    energy_kwh REAL,
    fuel_l REAL,
    samples INTEGER NOT NULL DEFAULT 0,
    speed_key TEXT
);
CREATE INDEX IF NOT EXISTS trips_end ON trips("end");
CREATE TABLE IF NOT EXISTS signal_keys (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    unit TEXT NOT NULL DEFAULT '',
    category TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS samples (
    trip_id INTEGER NOT NULL,
    timestamp REAL NOT NULL,
    key INTEGER NOT NULL,
    value REAL
);
CREATE INDEX IF NOT EXISTS samples_trip ON samples(trip_id, timestamp);
CREATE TABLE IF NOT EXISTS positions (
    trip_id INTEGER NOT NULL,
    timestamp REAL NOT NULL,
    lat REAL NOT NULL,
    lon REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS positions_trip ON positions(trip_id, timestamp);
"""
_TRIP_COLUMNS = 'id, start, "end", distance_km, max_speed_kmh, mean_speed_kmh, energy_kwh, fuel_l, samples, speed_key'


@dataclass(slots=True)
class Trip:
    """One trip: from the first to the last frame before a gap of more than the recorder's ``trip_gap_s``.

    ``samples`` counts the stored (reduced-rate) sample rows; ``speed_key`` names the signal the
    distance was integrated from (None: from positions, or no speed at all).
    """

    id: int | None
    start: float
    end: float
    distance_km: float = 0.0
    max_speed_kmh: float = 0.0
    mean_speed_kmh: float = 0.0
    energy_kwh: float | None = None
    fuel_l: float | None = None
    samples: int = 0
    speed_key: str | None = None

    @property
    def duration_s(self) -> float:
        return max(0.0, self.end - self.start)


def check_limits(retention_days: float, max_bytes: int) -> None:
    """ValueError naming the field when a limit is out of range."""
    if isinstance(retention_days, bool) or not isinstance(retention_days, (int, float)) or not (
            MIN_RETENTION_DAYS <= retention_days <= MAX_RETENTION_DAYS):
        raise ValueError(f"retention_days: expected {MIN_RETENTION_DAYS} to {MAX_RETENTION_DAYS} days, "
                         f"got {retention_days!r}")
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < MIN_MAX_BYTES:
        raise ValueError(f"max_bytes: expected a whole number of bytes, at least {MIN_MAX_BYTES} (1 MB), "
                         f"got {max_bytes!r}")


def _create_private(path: Path) -> None:
    """Create the file owner-only before SQLite opens it (SQLite gives its -wal/-shm files the same mode)."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file too: the archive is the owner's alone
    finally:
        os.close(fd)


class OwnerArchive:
    def __init__(self, path: str | Path, retention_days: float = 30, max_bytes: int = 50_000_000,
                 clock: Callable[[], float] = time.time) -> None:
        check_limits(retention_days, max_bytes)
        self.path = Path(path)
        self.retention_days = retention_days
        self.max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.RLock()
        # forget() bumps the file's user_version (the generation): a recorder holding a trip from before drops
        # it instead of writing it back, also when another process (the owner page) did the forgetting.
        self._seen_generation: int | None = None
        self._key_ids: dict[str, int] = {}
        _create_private(self.path)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        with self._lock:
            # auto_vacuum only takes effect before the first table exists (a new file).
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            # A small write-ahead log, cut back after checkpoints: it counts towards max_bytes.
            self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
            self._db.execute(f"PRAGMA journal_size_limit={WAL_PAGES * 4096}")
            self._db.execute("PRAGMA secure_delete=ON")  # deleted rows are overwritten, not just unlinked
            self._db.executescript(_SCHEMA)
            self._load_key_ids()
            self._seen_generation = self._db.execute("PRAGMA user_version").fetchone()[0]
            self._load_owner_limits()

    # -- writing (the recorder) ------------------------------------------------------
    def _load_key_ids(self) -> None:
        self._key_ids = {key: key_id for key_id, key in self._db.execute("SELECT id, key FROM signal_keys")}

    def _key_id(self, key: str, info: Mapping[str, tuple[str, str]] | None) -> int:
        unit, category = info.get(key, ("", "")) if info else ("", "")
        cursor = self._db.execute("INSERT OR IGNORE INTO signal_keys(key, unit, category) VALUES (?, ?, ?)",
                                  (key, unit, category))
        if cursor.rowcount:
            key_id = int(cursor.lastrowid)
        else:
            key_id = int(self._db.execute("SELECT id FROM signal_keys WHERE key = ?", (key,)).fetchone()[0])
        self._key_ids[key] = key_id
        return key_id

    def store(self, trip: Trip, samples: Sequence[tuple[float, str, float]] = (),
              positions: Sequence[tuple[float, float, float]] = (),
              key_info: Mapping[str, tuple[str, str]] | None = None) -> int:
        """Write a trip's summary and new rows in one transaction; the trip's id (a new row when ``trip.id``
        is None or its row is gone).  ``trip.samples`` is not written: the stored count grows by
        ``len(samples)``.  ``key_info`` gives (unit, category) for signal keys new to the archive."""
        with self._lock:
            key_ids = self._key_ids
            try:
                self._db.execute("BEGIN IMMEDIATE")
                trip_id = trip.id
                summary = (trip.start, trip.end, trip.distance_km, trip.max_speed_kmh, trip.mean_speed_kmh,
                           trip.energy_kwh, trip.fuel_l, trip.speed_key)
                updated = 0
                if trip_id is not None:
                    updated = self._db.execute(
                        'UPDATE trips SET start=?, "end"=?, distance_km=?, max_speed_kmh=?, mean_speed_kmh=?, '
                        "energy_kwh=?, fuel_l=?, speed_key=?, samples=samples+? WHERE id=?",
                        (*summary, len(samples), trip_id)).rowcount
                if not updated:
                    trip_id = int(self._db.execute(
                        'INSERT INTO trips(start, "end", distance_km, max_speed_kmh, mean_speed_kmh, energy_kwh, '
                        "fuel_l, speed_key, samples) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (*summary, len(samples))).lastrowid)
                rows = [(trip_id, t, key_ids.get(key) or self._key_id(key, key_info), value)
                        for t, key, value in samples]
                self._db.executemany("INSERT INTO samples(trip_id, timestamp, key, value) VALUES (?, ?, ?, ?)",
                                     rows)
                self._db.executemany("INSERT INTO positions(trip_id, timestamp, lat, lon) VALUES (?, ?, ?, ?)",
                                     [(trip_id, t, lat, lon) for t, lat, lon in positions])
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            return trip_id

    def _rollback(self) -> None:
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        self._load_key_ids_safely()

    def _load_key_ids_safely(self) -> None:
        try:
            self._load_key_ids()  # ids handed out inside the rolled-back transaction are void
        except sqlite3.Error:
            self._key_ids = {}

    # -- reading (the owner's page) --------------------------------------------------
    def trips(self) -> list[Trip]:
        """Every trip, newest first."""
        with self._lock:
            rows = self._db.execute(f'SELECT {_TRIP_COLUMNS} FROM trips ORDER BY start DESC, id DESC').fetchall()
        return [Trip(*row) for row in rows]

    def trip(self, trip_id: int) -> Trip | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_TRIP_COLUMNS} FROM trips WHERE id = ?", (trip_id,)).fetchone()
        return Trip(*row) if row else None

    def samples(self, trip_id: int, keys: Iterable[str] | None = None) -> list[tuple[float, str, float]]:
        """(timestamp, key, value) of a trip in time order, optionally only the given keys."""
        query = ("SELECT s.timestamp, k.key, s.value FROM samples s JOIN signal_keys k ON k.id = s.key "
                 "WHERE s.trip_id = ?")
        params: list = [trip_id]
        if keys is not None:
            wanted = list(dict.fromkeys(keys))
            if not wanted:
                return []
            query += f" AND k.key IN ({', '.join('?' * len(wanted))})"
            params += wanted
        with self._lock:
            return self._db.execute(query + " ORDER BY s.timestamp, s.rowid", params).fetchall()

    def positions(self, trip_id: int) -> list[tuple[float, float, float]]:
        """(timestamp, lat, lon) of a trip in time order, at full precision."""
        with self._lock:
            return self._db.execute("SELECT timestamp, lat, lon FROM positions WHERE trip_id = ? "
                                    "ORDER BY timestamp, rowid", (trip_id,)).fetchall()

    def signal_keys(self, trip_id: int) -> list[str]:
        """The signal keys with samples in a trip, sorted."""
        with self._lock:
            rows = self._db.execute("SELECT k.key FROM signal_keys k WHERE k.id IN "
                                    "(SELECT DISTINCT key FROM samples WHERE trip_id = ?) ORDER BY k.key",
                                    (trip_id,)).fetchall()
        return [row[0] for row in rows]

    def signal_units(self, keys: Iterable[str] | None = None) -> dict[str, str]:
        """Unit of each known signal key (``""`` when it has none)."""
        with self._lock:
            rows = self._db.execute("SELECT key, unit FROM signal_keys").fetchall()
        units = dict(rows)
        return units if keys is None else {key: units.get(key, "") for key in keys}

    def size_bytes(self) -> int:
        """Bytes on disk: the database file and its write-ahead log."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.path.getsize(f"{self.path}{suffix}")
            except OSError:
                pass
        return total

    # -- retention -------------------------------------------------------------------
    def set_limits(self, retention_days: float, max_bytes: int, persist: bool = False) -> None:
        """New limits; ``persist``: the owner's own choice (from their page), kept in the file, which wins
        over the configuration's defaults in every process that opens the archive."""
        check_limits(retention_days, max_bytes)
        with self._lock:
            self.retention_days, self.max_bytes = retention_days, max_bytes
            if persist:
                self._db.execute("INSERT OR REPLACE INTO owner_limits VALUES (1, ?, ?)", (retention_days, max_bytes))

    def _load_owner_limits(self) -> None:
        row = self._db.execute("SELECT retention_days, max_bytes FROM owner_limits WHERE id = 1").fetchone()
        if row is not None:
            self.retention_days, self.max_bytes = row[0], int(row[1])

    @property
    def owner_chose_limits(self) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM owner_limits").fetchone() is not None

    def _used_bytes(self) -> int:
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return (pages - free) * size

    def _delete_trips(self, trip_ids: list[int]) -> None:
        for table, column in (("samples", "trip_id"), ("positions", "trip_id"), ("trips", "id")):
            self._db.executemany(f"DELETE FROM {table} WHERE {column} = ?", [(i,) for i in trip_ids])

    def prune(self, keep: int | None = None) -> int:
        """Drop trips that ended more than ``retention_days`` ago, then oldest trips until the file is
        under ``max_bytes``; never the trip ``keep`` (the one being recorded).  How many were dropped."""
        with self._lock:
            self._load_owner_limits()  # the owner may have chosen new ones on their page (another process)
            cutoff = self._clock() - self.retention_days * DAY
            keep_id = -1 if keep is None else keep
            try:
                self._db.execute("BEGIN IMMEDIATE")
                old = [row[0] for row in self._db.execute('SELECT id FROM trips WHERE "end" < ? AND id != ?',
                                                          (cutoff, keep_id))]
                self._delete_trips(old)
                dropped = len(old)
                oldest_first = [row[0] for row in self._db.execute(
                    'SELECT id FROM trips WHERE id != ? ORDER BY "end", id', (keep_id,))]
                for trip_id in oldest_first:
                    if self._used_bytes() < self.max_bytes:
                        break
                    self._delete_trips([trip_id])
                    dropped += 1
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            if dropped or self.size_bytes() >= self.max_bytes:
                self._shrink()
            return dropped

    def _shrink(self) -> None:
        # executescript steps the pragma to the end (execute() frees only one page).
        self._db.executescript("PRAGMA incremental_vacuum;")
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    @property
    def generation(self) -> int:
        """How many times the archive was forgotten (in the file: any process's forget() counts)."""
        with self._lock:
            current = self._db.execute("PRAGMA user_version").fetchone()[0]
            if current != self._seen_generation:  # forgotten elsewhere: the key ids cached here are gone
                self._seen_generation = current
                self._key_ids = {}
                self._load_key_ids()
            return current

    def forget(self) -> None:
        """Delete everything (the owner's "forget me") and rewrite the file, so no old row survives in it."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for table in ("samples", "positions", "trips", "signal_keys", "owner_limits"):
                    self._db.execute(f"DELETE FROM {table}")
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                self._db.execute(f"PRAGMA user_version = {int(version) + 1}")
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            self._seen_generation = version + 1
            self._key_ids = {}
            self._db.execute("VACUUM")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self._db.close()

    def __enter__(self) -> OwnerArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
