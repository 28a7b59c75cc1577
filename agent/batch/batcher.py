"""Batcher: collected rows -> closed, encoded batches handed to a sink (the store).

One open batch per stream.  A batch closes when

* its data time span reaches ``max_age_s`` (checked in ``put``: a row whose
  timestamp is ``max_age_s`` or more away from the batch's first row, in either
  direction, starts a new batch; so a log replayed at any speed gives the same
  batches, and a logger clock reset closes the batch instead of mixing times);
* it has been open ``max_age_s`` by the wall clock (checked in ``tick``: a quiet
  bus must not hold data back forever);
* its estimated compressed size reaches ``max_bytes`` (an estimate from the
  stream's previous batches; a batch that still comes out too big is split in
  halves until every part fits, so ``max_bytes`` is a hard limit);
* ``flush()`` is called (shutdown).

The batcher does not number batches or store them: ``numbering(stream)`` gives
each closed batch its identity (``agent.batch.identity``) and ``sink`` takes it
(in the agent, the one store writer, ``agent.flow.writer``, which also keeps
what the store refused for a retry).

On the hot path ``put`` appends one timestamp and one tuple per row; columns
are built only when a batch closes.  A Batcher is used from one thread (the
pipeline's); the sink it calls (the store) is the thread-safe part.
"""

from __future__ import annotations

import logging
import time
import uuid
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.batch.compression import batch_compressor
from agent.batch.format import DEFAULT_LEVEL, BatchError, EncodedBatch, TableData, dictionary_id, encode_batch
from agent.batch.identity import BatchNumbers
from agent.model import UNCLASSIFIED, Row, SignalSpec

log = logging.getLogger(__name__)

BatchSink = Callable[[EncodedBatch], None]
# First guess of compressed bytes per sample before a stream has closed a batch;
# measured values on the shared logs are 0.08-0.55; a batch that turns out too big is split.
INITIAL_BYTES_PER_SAMPLE = 0.25
# Close a little before the estimate reaches max_bytes: the estimate is an average.
SIZE_MARGIN = 0.8
# An open batch holds its rows as Python tuples, ~40-60 bytes per sample: at most this many samples (~6 MB)
# per stream, whatever max_bytes would allow.  At 1 ms time resolution a 64 KiB batch of the soak's traffic
# holds 1M+ samples, and the service's RSS followed them (benchmarks/soak.py, 17 min of driving: max 107 MB
# at 2M samples, 91 MB at 250k, 77 MB at 100k).  The cost: a 10 s window of more samples is cut in two
# (kona 2019 at full rate, 110k samples per 10 s: 9,071 -> 10,324 bytes).
MAX_OPEN_SAMPLES = 100_000


def current_boot_id() -> str:
    """The kernel's boot id (changes every boot), or a random one per process elsewhere."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return str(uuid.uuid4())


@dataclass(slots=True)
class _Table:
    # 8 bytes a row instead of a float object (24) and its list slot (8): an open batch's rows stay in memory
    # for up to max_age_s (issue 16: the service's RSS <= 60 MB).
    timestamps: array = field(default_factory=lambda: array("d"))
    rows: list[tuple] = field(default_factory=list)


@dataclass(slots=True)
class _OpenBatch:
    stream: str
    priority: int
    # Rows with data time strictly inside (low_time, high_time) belong here:
    # first row's time -/+ max_age_s.
    low_time: float
    high_time: float
    opened: float  # clock() when opened
    # key (bus, message, raw, *signal names) -> bound appends of the table's lists
    tables: dict[tuple, tuple] = field(default_factory=dict)
    table_data: dict[tuple, _Table] = field(default_factory=dict)
    categories: set[str] = field(default_factory=set)
    merged: set[frozenset[str]] = field(default_factory=set)  # the rows' category sets already in ``categories``
    samples: int = 0
    limit: int = 0  # close when samples reaches this (size estimate)


@dataclass
class BatcherStats:
    rows: int = 0
    batches: int = 0
    splits: int = 0


class Batcher:
    """Groups rows per stream into batches; see the module docstring for when they close.

    ``numbering(stream)`` gives a closed batch its identity; without it, ``seq_source()``
    numbers batches within ``boot_id`` (tests, benchmarks).  ``clock`` is the wall
    clock used for ``tick`` (monotonic) and ``created_clock`` stamps headers.
    """

    def __init__(
        self,
        specs: Mapping[str, SignalSpec],
        sink: BatchSink,
        vehicle_id: str,
        boot_id: str = "",
        seq_source: Callable[[], int] | None = None,
        max_age_s: float = 10.0,
        max_bytes: int = 65536,
        clock: Callable[[], float] = time.monotonic,
        *,
        level: int = DEFAULT_LEVEL,
        dictionary: bytes | None = None,
        consent_version: int = 0,
        bench: bool = False,
        max_samples: int = MAX_OPEN_SAMPLES,
        created_clock: Callable[[], float] = time.time,
        numbering: Callable[[str], BatchNumbers] | None = None,
        time_resolution_us: int = 1,
    ) -> None:
        if max_age_s <= 0:
            raise ValueError(f"max_age_s must be positive, got {max_age_s}")
        if max_bytes < 1024:
            raise ValueError(f"max_bytes must be at least 1024, got {max_bytes}")
        self.specs = specs
        self.sink = sink
        self.vehicle_id = vehicle_id
        self.boot_id = boot_id
        if numbering is None:
            if seq_source is None:
                raise ValueError("a Batcher needs numbering or seq_source")
            numbering = _counting(boot_id, seq_source)
        self.numbering = numbering
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.clock = clock
        self.created_clock = created_clock
        self.consent_version = consent_version
        self.bench = bench
        self.max_samples = max_samples
        self.time_resolution_us = time_resolution_us
        self.stats = BatcherStats()
        self._open: dict[str, _OpenBatch] = {}
        self._bytes_per_sample: dict[str, float] = {}
        self._dictionary_id = dictionary_id(dictionary) if dictionary else None
        self._compressor = batch_compressor(level, dictionary)

    # -- hot path -------------------------------------------------------------------------
    def put(self, row: Row) -> None:
        batch = self._open.get(row.stream)
        timestamp = row.timestamp
        if batch is None or batch.samples >= batch.limit or not batch.low_time < timestamp < batch.high_time:
            batch = self._rollover(batch, row)
        values = row.values
        key = (row.bus, row.message, row.raw, *values)
        appenders = batch.tables.get(key)
        if appenders is None:
            appenders = self._new_table(batch, key, row)
        appenders[0](timestamp)
        appenders[1](tuple(values.values()))
        batch.samples += len(values)
        categories = row.categories
        # Rows share their stage's few frozensets (hashed once): each is merged into the batch's set once.
        if categories not in batch.merged:
            if categories:
                batch.categories.update(categories)
            batch.merged.add(categories)
        if row.priority > batch.priority:
            batch.priority = row.priority

    def _rollover(self, batch: _OpenBatch | None, row: Row) -> _OpenBatch:
        """Close ``batch`` (if any) and open the stream's next one, starting at ``row``."""
        if batch is not None:
            self._close(batch)
        per_sample = self._bytes_per_sample.get(row.stream, INITIAL_BYTES_PER_SAMPLE)
        limit = min(self.max_samples, max(1, int(self.max_bytes * SIZE_MARGIN / per_sample)))
        first = row.timestamp
        batch = _OpenBatch(row.stream, row.priority, first - self.max_age_s, first + self.max_age_s, self.clock(),
                           limit=limit)
        self._open[row.stream] = batch
        return batch

    def _new_table(self, batch: _OpenBatch, key: tuple, row: Row) -> tuple:
        if row.raw:
            prefix = row.message + "."
            for name in row.values:
                self._spec(prefix + name)  # reject the row now, not when the batch closes
        table = _Table()
        appenders = (table.timestamps.append, table.rows.append)
        batch.tables[key] = appenders
        batch.table_data[key] = table
        return appenders

    # -- closing --------------------------------------------------------------------------
    def tick(self, now: float | None = None) -> int:
        """Close batches open for ``max_age_s`` of wall-clock time; returns how many closed."""
        now = self.clock() if now is None else now
        due = [b for b in self._open.values() if now - b.opened >= self.max_age_s]
        for batch in due:
            self._close(batch)
        return len(due)

    def flush(self) -> int:
        """Close every open batch (shutdown); returns how many closed."""
        batches = list(self._open.values())
        for batch in batches:
            self._close(batch)
        return len(batches)

    def consent_changed(self, version: int) -> None:
        """Rows from now on were filtered under consent ``version``: close what is open (each batch carries
        exactly one consent version)."""
        self.flush()
        self.consent_version = version

    def _close(self, batch: _OpenBatch) -> None:
        del self._open[batch.stream]
        if not batch.tables:
            return
        tables = [self._table_data(key, table) for key, table in batch.table_data.items()]
        self.stats.rows += sum(len(t.rows) for t in tables)
        categories = set(batch.categories)
        for table in tables:
            if table.raw:
                prefix = table.message + "."
                categories.update(self._spec(prefix + name).category for name in table.signals)
        self._emit(batch.stream, batch.priority, sorted(categories), tables)

    def _spec(self, key: str) -> SignalSpec:
        spec = self.specs.get(key)
        if spec is None:
            raise BatchError(f"batcher: raw value for {key}, which is not in the signal specs")
        return spec

    def _table_data(self, key: tuple, table: _Table) -> TableData:
        bus, message, raw, *names = key
        signals = tuple(names)
        data = TableData(bus, message, raw, signals, table.timestamps, table.rows)
        if raw:
            specs = [self._spec(f"{message}.{name}") for name in signals]
            data.scales = [s.scale for s in specs]
            data.offsets = [s.offset for s in specs]
        return data

    def _emit(self, stream: str, priority: int, categories: list[str], tables: list[TableData],
              numbers: BatchNumbers | None = None) -> None:
        # A split batch keeps its numbers for the first half, so the receiver sees no gap.
        if numbers is None:
            numbers = self.numbering(stream)
        header = {
            "vehicle_id": self.vehicle_id, **numbers.header_fields(), "stream": stream,
            "priority": priority, "categories": categories or [UNCLASSIFIED], "consent_version": self.consent_version,
            "bench": self.bench, "created": self.created_clock(),
        }
        encoded = encode_batch(header, tables, self._compressor, self._dictionary_id, self.time_resolution_us)
        if len(encoded.payload) > self.max_bytes and sum(len(t.rows) for t in tables) > 1:
            self.stats.splits += 1
            first, second = _halves(tables)
            self._emit(stream, priority, categories, first, numbers)
            self._emit(stream, priority, categories, second)
            return
        per_sample = len(encoded.payload) / max(1, encoded.samples)
        previous = self._bytes_per_sample.get(stream)
        self._bytes_per_sample[stream] = per_sample if previous is None else 0.5 * (previous + per_sample)
        self.stats.batches += 1
        self.sink(encoded)

    def open_streams(self) -> dict[str, int]:
        """Samples waiting per stream (for status output)."""
        return {stream: batch.samples for stream, batch in self._open.items()}


def _counting(boot_id: str, seq_source: Callable[[], int]) -> Callable[[str], BatchNumbers]:
    def number(_stream: str) -> BatchNumbers:
        return BatchNumbers("", boot_id, seq_source())

    return number


def _halves(tables: list[TableData]) -> tuple[list[TableData], list[TableData]]:
    """Split a batch's rows in two: big tables are cut in the middle, so both halves
    keep roughly half the bytes even when one table dominates."""
    if len(tables) > 1 and all(len(t.rows) == 1 for t in tables):
        middle = len(tables) // 2
        return tables[:middle], tables[middle:]
    first: list[TableData] = []
    second: list[TableData] = []
    for table in tables:
        cut = len(table.rows) // 2
        if cut == 0:
            first.append(table)
            continue
        first.append(_slice(table, 0, cut))
        second.append(_slice(table, cut, len(table.rows)))
    return first, second


def _slice(table: TableData, start: int, stop: int) -> TableData:
    return TableData(table.bus, table.message, table.raw, table.signals, table.timestamps[start:stop],
                     table.rows[start:stop], table.scales, table.offsets)
