"""The batch payload: msgpack envelope, zstd-compressed columnar body (docs/payload.md).

Payload = msgpack map ``{"header": {...}, "body": <bytes>}``.  The header is
plain msgpack so a receiver (or the store) can route, deduplicate and check a
batch without decompressing it; ``header["sha256"]`` is the SHA-256 of
``body`` exactly as transmitted.  The body is one zstd frame holding a msgpack
map ``{"t_base_us": int, "tables": [...]}``; a table holds the rows of one
message on one bus that share a signal set (multiplexed messages make one
table per multiplexer value), with one timestamp column and one column per
signal (see ``agent.batch.columns``).

Why msgpack: self-describing (no schema compiler, unlike protobuf), a library
in every language, native bytes and int64/uint64, already a dependency, and its
C packer keeps encoding off the per-sample Python path.  CBOR would have worked
as well; msgpack was faster in Python.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import msgpack
import zstandard

from agent.batch.columns import (
    ColumnError,
    capacity,
    decode_times,
    decode_values,
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
MAX_ARRAY_LEN = 1 << 16  # elements of any one msgpack array (tables, signals, columns)
MAX_MAP_LEN = 1 << 10  # entries of any one msgpack map
MAX_ELEMENTS = 1 << 19  # arrays, maps and their elements in one body or envelope, all together
_ZSTD_INPUT_STEP = 256  # compressed bytes fed per step: one step expands to at most a few MiB
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


@dataclass(slots=True)
class DecodedTable:
    bus: str
    message: str
    raw: bool
    signals: list[str]
    timestamps: list[float]
    columns: list[list]  # per signal, one value per row (raw values when ``raw``)
    scales: list[int | float]
    offsets: list[int | float]


@dataclass(slots=True)
class DecodedBatch:
    header: dict
    tables: list[DecodedTable]


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


# -- decoding ---------------------------------------------------------------------------------

def _unpack_bounded(data: bytes, what: str) -> object:
    """msgpack.unpackb with the decode limits: every array or map is counted (itself and its items) as
    it is built, so a small input of many tiny nested objects cannot unfold into gigabytes of Python
    objects (the real logs' batches hold a few thousand)."""
    left = MAX_ELEMENTS

    def count(items):
        nonlocal left
        left -= len(items) + 1
        if left < 0:
            raise BatchError(f"{what} holds more than {MAX_ELEMENTS} arrays, maps and items")
        return items

    return msgpack.unpackb(data, raw=False, strict_map_key=True, max_array_len=MAX_ARRAY_LEN,
                           max_map_len=MAX_MAP_LEN, list_hook=count, object_hook=count)


def decode_envelope(payload: bytes) -> tuple[dict, bytes]:
    """(header, compressed body); checks the structure and the SHA-256."""
    try:
        envelope = _unpack_bounded(payload, "payload")
    except BatchError:
        raise
    except Exception as exc:  # msgpack raises several types for damaged input
        raise BatchError(f"payload is not a msgpack batch envelope: {type(exc).__name__}: {exc}") from None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("header"), dict) \
            or not isinstance(envelope.get("body"), bytes):
        raise BatchError("payload is not a batch envelope (expected a map with 'header' and 'body')")
    header, body = envelope["header"], envelope["body"]
    if header.get("schema") != SCHEMA_VERSION:
        raise BatchError(f"unsupported batch schema {header.get('schema')!r} (this reader knows {SCHEMA_VERSION})")
    digest = hashlib.sha256(body).hexdigest()
    if header.get("sha256") != digest:
        raise BatchError(f"body SHA-256 mismatch: header says {header.get('sha256')!r}, body hashes to {digest}")
    return header, body


def _decompress(body: bytes, decompressor: zstandard.ZstdDecompressor) -> bytes:
    """The body's first zstd frame, refused once it passes MAX_BODY_BYTES.  Fed in small steps, so
    memory stays bounded whatever the frame header says (or leaves out) about the content size."""
    try:
        declared = zstandard.frame_content_size(body)
    except zstandard.ZstdError as exc:
        raise BatchError(f"batch body is not a zstd frame: {exc}") from None
    if declared > MAX_BODY_BYTES:
        raise BatchError(f"batch body declares {declared} bytes decompressed, more than the limit of "
                         f"{MAX_BODY_BYTES} (MAX_BODY_BYTES)")
    stream = decompressor.decompressobj()
    parts: list[bytes] = []
    total = 0
    for start in range(0, len(body), _ZSTD_INPUT_STEP):
        part = stream.decompress(body[start:start + _ZSTD_INPUT_STEP])
        total += len(part)
        if total > MAX_BODY_BYTES:
            raise BatchError(f"batch body decompresses to more than the limit of {MAX_BODY_BYTES} bytes "
                             f"(MAX_BODY_BYTES)")
        parts.append(part)
        if stream.eof:
            break
    if not stream.eof:
        raise BatchError("batch body is a truncated zstd frame")
    return b"".join(parts)


def _declared(header: dict, name: str, limit: int) -> int | None:
    value = header.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BatchError(f"header {name} {value!r} is not a count")
    if value > limit:
        raise BatchError(f"header declares {value} {name}, more than the limit of {limit}")
    return value


def decode_batch(payload: bytes, dictionaries: Mapping[str, bytes] | None = None) -> DecodedBatch:
    """Decode a payload; raises BatchError for anything malformed or beyond the decode limits."""
    header, body = decode_envelope(payload)
    rows = _declared(header, "rows", MAX_ROWS)
    samples = _declared(header, "samples", MAX_SAMPLES)
    dict_name = header.get("zstd_dict")
    if dict_name:
        data = (dictionaries or {}).get(dict_name)
        if data is None:
            raise BatchError(f"batch needs zstd dictionary {dict_name}, which was not given")
        decompressor = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(data),
                                                  max_window_size=MAX_BODY_BYTES)
    else:
        decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_BODY_BYTES)
    try:
        raw_body = _decompress(body, decompressor)
        content = _unpack_bounded(raw_body, "batch body")
    except BatchError:
        raise
    except Exception as exc:
        raise BatchError(f"batch body cannot be decompressed/unpacked: {type(exc).__name__}: {exc}") from None
    try:
        base_us = content["t_base_us"]
        budget = _Budget()
        tables = [_decode_table(index, table, base_us, budget) for index, table in enumerate(content["tables"])]
    except BatchError:
        raise
    except (ColumnError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise BatchError(f"batch body is malformed: {type(exc).__name__}: {exc}") from None
    for name, declared, actual in (("rows", rows, budget.rows), ("samples", samples, budget.samples)):
        if declared is not None and declared != actual:
            raise BatchError(f"header declares {declared} {name} but the tables hold {actual}")
    return DecodedBatch(header, tables)


@dataclass(slots=True)
class _Budget:
    """Rows and samples of the tables decoded so far, against MAX_ROWS and MAX_SAMPLES."""

    rows: int = 0
    samples: int = 0

    def take(self, rows: int, signals: int, where: str) -> None:
        self.rows += rows
        self.samples += rows * signals
        if self.rows > MAX_ROWS:
            raise BatchError(f"{where}: declares {rows} rows, which takes the batch past the limit of "
                             f"{MAX_ROWS} rows (MAX_ROWS)")
        if self.samples > MAX_SAMPLES:
            raise BatchError(f"{where}: declares {rows} rows of {signals} signals, which takes the batch past "
                             f"the limit of {MAX_SAMPLES} samples (MAX_SAMPLES)")


def _check_capacity(where: str, count: int, column: object, what: str) -> None:
    held, exact = capacity(column)
    if held is not None and (count != held if exact else count > held):
        raise BatchError(f"{where}: declares {count} rows but its {what} holds {'' if exact else 'at most '}{held}")


def _decode_table(index: int, table: list, base_us: int, budget: _Budget) -> DecodedTable:
    if not isinstance(table, list) or len(table) != len(TABLE_FIELDS):
        raise BatchError(f"table {index} is not an array of {len(TABLE_FIELDS)} fields ({', '.join(TABLE_FIELDS)})")
    message, signals, scales, offsets, bus, raw, count, time_column, columns = table
    if not isinstance(message, str) or not isinstance(bus, str) or not isinstance(signals, list) \
            or not all(isinstance(name, str) for name in signals):
        raise BatchError(f"table {index}: names (message, bus, signals) are not all text")
    where = f"table {index} ({bus}/{message})"
    if not isinstance(columns, list) or len(columns) != len(signals):
        raise BatchError(f"{where}: {len(signals)} signals but "
                         f"{len(columns) if isinstance(columns, list) else 'no list of'} columns")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise BatchError(f"{where}: row count {count!r} is not a count")
    # Every declared count is checked against what the data holds, and the totals against the
    # limits, before a list of ``count`` values is made.
    _check_capacity(where, count, time_column, "time column")
    for number, column in enumerate(columns):
        _check_capacity(where, count, column, f"column {number} ({signals[number]})")
    budget.take(count, len(signals), where)
    try:
        timestamps = decode_times(time_column, count, base_us)
        values: list[list] = []
        for column in columns:
            values.append(decode_values(column, count, values))
    except ColumnError as exc:
        raise BatchError(f"{where}: {exc}") from None
    if raw and (not isinstance(scales, list) or not isinstance(offsets, list)
                or len(scales) != len(signals) or len(offsets) != len(signals)):
        raise BatchError(f"{where}: scales/offsets do not match the {len(signals)} signals")
    if raw and not all(type(v) in (int, float) for v in (*scales, *offsets)):
        raise BatchError(f"{where}: scales/offsets are not all numbers")
    if not raw:
        scales, offsets = [1] * len(signals), [0] * len(signals)
    return DecodedTable(bus, message, bool(raw), signals, timestamps, values, scales, offsets)


def iter_samples(decoded: DecodedBatch) -> Iterator[tuple[float, str, str, int | float, int | float | None]]:
    """(timestamp, bus, key, physical value, raw value or None): table by table,
    signal by signal, rows in arrival order.  Physical values are computed exactly as
    ``SignalSpec.to_physical`` does, so they equal a direct cantools decode."""
    for table in decoded.tables:
        prefix = table.message + "."
        for name, column, scale, offset in zip(table.signals, table.columns, table.scales, table.offsets):
            key = prefix + name
            if table.raw:
                for timestamp, raw in zip(table.timestamps, column):
                    yield timestamp, table.bus, key, raw * scale + offset, raw
            else:
                for timestamp, value in zip(table.timestamps, column):
                    yield timestamp, table.bus, key, value, None


__all__ = ["DEFAULT_LEVEL", "MAX_BODY_BYTES", "MAX_ROWS", "MAX_SAMPLES", "SCHEMA_VERSION", "BatchError",
           "DecodedBatch", "DecodedTable", "EncodedBatch", "TableData", "decode_batch", "decode_envelope",
           "dictionary_id", "encode_batch", "iter_samples", "schema_dictionary"]
