"""Reading a batch payload back (docs/payload.md): the envelope and its SHA-256, then the body, with limits.

The encoder is ``agent.batch.format``; this is the side every reader of untrusted payloads uses (the store
checking what it is given, the cloud receiver, ``vehicle-agent inspect``).  Every limit is checked while
the input is unpacked, before anything large is built: a few hostile bytes cannot unfold into gigabytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import msgpack
import zstandard

from agent.batch.columns import ColumnError, capacity, decode_times, decode_values
from agent.batch.format import MAX_BODY_BYTES, MAX_ROWS, MAX_SAMPLES, SCHEMA_VERSION, TABLE_FIELDS, BatchError

MAX_ARRAY_LEN = 1 << 16  # elements of any one msgpack array (tables, signals, columns)
MAX_MAP_LEN = 1 << 10  # entries of any one msgpack map
MAX_ELEMENTS = 1 << 19  # arrays, maps and their elements in one body or envelope, all together
_ZSTD_INPUT_STEP = 256  # compressed bytes fed per step: one step expands to at most a few MiB


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


__all__ = ["DecodedBatch", "DecodedTable", "decode_batch", "decode_envelope", "iter_samples"]
