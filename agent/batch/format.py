"""The batch payload: msgpack envelope, zstd-compressed columnar body (docs/payload.md).

Payload = msgpack map ``{"header": {...}, "body": <bytes>}``.  The header is
plain msgpack so a receiver (or the store) can route, deduplicate and check a
batch without decompressing it; ``header["sha256"]`` is the SHA-256 of
``body`` exactly as transmitted.  The body is one zstd frame holding a msgpack
map ``{"t_base_us": int, "tables": [...]}``; a table holds the rows of one
message on one bus that share a signal set (multiplexed messages make one
table per multiplexer value), with one timestamp column and one column per
signal (see ``agent.batch.columns``).  Reading a payload back, with its limits, is ``agent.batch.reading``.

Why msgpack: self-describing (no schema compiler, unlike protobuf), a library
in every language, native bytes and int64/uint64, already a dependency, and its
C packer keeps encoding off the per-sample Python path.  CBOR would have worked
as well; msgpack was faster in Python.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import msgpack
import zstandard

from agent.batch.columns import (
    ColumnError,
    encode_times,
    encode_values,
    micros_of,
    quantize_us,
)
from agent.model import SignalSpec

SCHEMA_VERSION = 1
DEFAULT_LEVEL = 19
# The agent's default time resolution of telemetry batches (batching.time_resolution_us): 1 ms.  Below it
# is the logger's and the bus's jitter, 60-75 % of a batch's bytes on the shared logs (docs/payload.md).
DEFAULT_TIME_RESOLUTION_US = 1000
MAX_TIME_RESOLUTION_US = 1_000_000
# Decode limits (docs/payload.md): past one, a batch is refused (BatchError) before it takes memory in proportion
# to its claims.  The agent stays far below: real bodies are ~5x their payload (< 1 MiB at the 64 KiB default),
# the batcher closes at 100,000 samples (MAX_OPEN_SAMPLES), an incident ring holds 400,000 frames.
MAX_BODY_BYTES = 64 * 1024 * 1024  # decompressed body (also the largest zstd window accepted)
MAX_ROWS = 1 << 22  # rows (frames) in one batch: 4,194,304
MAX_SAMPLES = 1 << 25  # values (rows x signals) in one batch: 33,554,432
HEADER_FIELDS = ("schema", "vehicle_id", "store_epoch", "boot_id", "seq", "stream", "stream_seq",
                 "priority", "categories", "consent_version",
                 "bench", "t_min", "t_max", "t_res_us", "rows", "samples", "created", "zstd_dict", "sha256")


class BatchError(ValueError):
    """A payload that cannot be encoded or decoded; the message says what is wrong."""


@dataclass(slots=True)
class TableData:
    """Input of the encoder: the rows of one table, row-major as collected."""

    bus: str
    message: str
    raw: bool
    signals: tuple[str, ...]
    timestamps: list[float]
    rows: list[tuple]
    # Raw tables: the DBC's conversion per signal (physical = raw * scale + offset).
    scales: list[int | float] = field(default_factory=list)
    offsets: list[int | float] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class EncodedBatch:
    payload: bytes
    header: dict

    @property
    def stream(self) -> str:
        return self.header["stream"]

    @property
    def priority(self) -> int:
        return self.header["priority"]

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(self.header["categories"])

    @property
    def sha256(self) -> str:
        return self.header["sha256"]

    @property
    def boot_id(self) -> str:
        return self.header["boot_id"]

    @property
    def seq(self) -> int:
        return self.header["seq"]

    @property
    def samples(self) -> int:
        return self.header["samples"]


def dictionary_id(dictionary: bytes) -> str:
    return "sha256:" + hashlib.sha256(dictionary).hexdigest()


def schema_dictionary(specs: Mapping[str, SignalSpec]) -> bytes:
    """A zstd raw-content dictionary made from a signal catalog.

    It holds the table fields every batch repeats (message and signal names,
    scale, offset) in the exact msgpack form the body uses, so zstd can refer
    to them instead of spending ~0.1-0.3 bytes per frame on names in each 10 s
    batch.  It is derived, not trained: both ends rebuild it from the same
    DBC/catalog, or the receiver gets the bytes once (``zstd_dict`` names it).
    """
    by_message: dict[str, list[SignalSpec]] = {}
    for spec in specs.values():
        by_message.setdefault(spec.message, []).append(spec)
    parts = []
    for message in sorted(by_message):
        signals = by_message[message]
        # The first four table fields, in the body's own msgpack form (9-field array header included).
        head = msgpack.packb([message, [s.signal for s in signals], [s.scale for s in signals],
                              [s.offset for s in signals], "", True, 0, 0, 0])
        parts.append(head[: head.rindex(msgpack.packb(""))])
    return b"".join(parts)


# Position of each field in a table array (docs/payload.md, "Tables").  An array,
# not a map: keys repeated in every table cost ~5 % of a batch after zstd.
TABLE_FIELDS = ("message", "signals", "scales", "offsets", "bus", "raw", "rows", "t", "columns")


def _exact(values: tuple) -> tuple:
    """A column's values as a key that only an identical column shares: type and bits, so that ``1`` and
    ``1.0``, or ``0.0`` and ``-0.0``, which Python's ``==`` takes as equal, are not referenced as the same."""
    return tuple((v.hex(),) if isinstance(v, float) else (type(v), v) for v in values)


def _table_array(table: TableData, base_us: int, resolution_us: int) -> tuple[list, int]:
    """(msgpack-ready table, sample count)."""
    count = len(table.rows)
    time_column, _ = encode_times(table.timestamps, base_us, resolution_us)
    columns: list = []
    # Candidates by == (hashed in C), confirmed by _exact: 1 == 1.0, and 0.0 and -0.0 are == yet differ, so
    # the per-value confirmation runs only for a column that looks like an earlier one.
    seen: dict[tuple, list[int]] = {}
    column_values: list[tuple] = []
    for index, values in enumerate(zip(*table.rows)):
        column_values.append(values)
        candidates = seen.setdefault(values, [])
        mine = _exact(values) if candidates else None
        earlier = next((j for j in candidates if _exact(column_values[j]) == mine), None)
        if earlier is not None:
            columns.append(["=", earlier])
            continue
        candidates.append(index)
        try:
            columns.append(encode_values(list(values)))
        except ColumnError as exc:
            raise BatchError(f"{table.message}.{table.signals[index]}: {exc}") from None
    scales, offsets = (table.scales, table.offsets) if table.raw else (None, None)
    out = [table.message, list(table.signals), scales, offsets, table.bus, table.raw, count, time_column, columns]
    return out, count * len(table.signals)


def encode_batch(
    header: dict,
    tables: Sequence[TableData],
    compressor: zstandard.ZstdCompressor,
    dictionary: str | None = None,
    time_resolution_us: int = 1,
) -> EncodedBatch:
    """Build a payload.  ``header`` gives the identity fields (vehicle_id, boot_id,
    seq, stream, priority, categories, consent_version, bench, created); this adds
    the time range, counts, ``zstd_dict`` and the SHA-256.  ``time_resolution_us``
    > 1 keeps timestamps to that resolution only (floored), said in ``t_res_us``."""
    if not tables:
        raise BatchError("a batch needs at least one row")
    if not isinstance(time_resolution_us, int) or not 1 <= time_resolution_us <= MAX_TIME_RESOLUTION_US:
        raise BatchError(f"time_resolution_us must be an integer 1..{MAX_TIME_RESOLUTION_US}, "
                         f"got {time_resolution_us!r}")
    all_times = [t for table in tables for t in (min(table.timestamps), max(table.timestamps))]
    t_min, t_max = min(all_times), max(all_times)
    base_us = micros_of(t_min)
    resolution: dict = {}
    if time_resolution_us > 1:
        base_us = quantize_us(base_us, time_resolution_us)
        t_min, t_max = base_us / 1_000_000, quantize_us(micros_of(t_max), time_resolution_us) / 1_000_000
        resolution["t_res_us"] = time_resolution_us
    encoded = []
    samples = rows = 0
    for table in tables:
        mapped, count = _table_array(table, base_us, time_resolution_us)
        encoded.append(mapped)
        samples += count
        rows += len(table.rows)
    raw_body = msgpack.packb({"t_base_us": base_us, "tables": encoded})
    body = compressor.compress(raw_body)
    full = {
        "schema": SCHEMA_VERSION, **header, "t_min": t_min, "t_max": t_max, **resolution, "rows": rows,
        "samples": samples,
        "zstd_dict": dictionary, "sha256": hashlib.sha256(body).hexdigest(),
    }
    ordered = {name: full[name] for name in HEADER_FIELDS if name in full}
    ordered.update((k, v) for k, v in full.items() if k not in ordered)
    return EncodedBatch(msgpack.packb({"header": ordered, "body": body}), ordered)


__all__ = ["DEFAULT_LEVEL", "MAX_BODY_BYTES", "MAX_ROWS", "MAX_SAMPLES", "SCHEMA_VERSION", "TABLE_FIELDS",
           "BatchError", "EncodedBatch", "TableData", "dictionary_id", "encode_batch", "schema_dictionary"]
