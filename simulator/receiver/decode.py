"""Verify one received batch and turn it into rows for the receiver's database.

Checks, in order (any failure rejects the message as corrupt, with the reason):

1. the whole payload matches the ``payload_sha256`` user property (when the
   sender set it, as the agent does): a damaged byte anywhere is caught here;
2. the envelope parses and the body matches ``header.sha256`` (``decode_envelope``);
3. the header agrees with the topic (vehicle, stream) and with every MQTT user
   property that repeats a header field, and every header field the receiver
   stores is of a type and range SQLite holds: ``seq``, ``stream_seq`` and
   ``samples`` integers in 0..2^63-1, ``priority`` in -2^63..2^63-1 (never a
   bool), times finite numbers, ``categories`` a list of text (``check_fields``);
4. the body decompresses and decodes (``decode_batch``) within the decode limits
   (``agent.batch.format``: MAX_BODY_BYTES, MAX_ROWS, MAX_SAMPLES, declared counts
   against what the data holds).  A batch compressed with a zstd dictionary the
   receiver does not have yet is kept (it is verified) and decoded when the
   dictionary arrives (the vehicle publishes it, retained, on
   ``.../v1/dictionary/<sha256>``); until then the report counts it ``undecoded``.

The batch's identity is (vehicle, ``store_epoch``, ``boot_id``, ``seq``), the
epoch "" when the header has none (older agents); the row carries the SHA-256 of
the whole payload, which tells the store a duplicate from a conflict.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from agent.batch.format import BatchError
from agent.batch.reading import DecodedBatch, decode_batch, decode_envelope, iter_samples
from agent.model import UNCLASSIFIED
from agent.uplink.properties import PAYLOAD_SHA256, PROPERTY_FIELDS, property_text
from simulator.receiver.store import BatchRow, SampleRow

MAX_EPOCH_CHARS = 128  # the agent's epochs are 16 hex digits (agent.buffer.epoch)
SQLITE_MAX = 2**63 - 1  # SQLite INTEGER is a signed 64-bit number: beyond it a bind raises OverflowError
SQLITE_MIN = -(2**63)
# Integer header fields the receiver stores, with their lowest allowed value (all at most SQLITE_MAX).
INTEGER_FIELDS = {"seq": 0, "stream_seq": 0, "samples": 0, "priority": SQLITE_MIN}
TIME_FIELDS = ("t_min", "t_max", "created")


class BatchRejected(ValueError):
    """The message is not a valid batch; the text says why."""


def _check_header(header: Mapping[str, Any], vehicle: str, stream: str, props: Mapping[str, str]) -> None:
    if header.get("vehicle_id", vehicle) != vehicle:
        raise BatchRejected(f"header vehicle_id {header.get('vehicle_id')!r} does not match the topic ({vehicle!r})")
    if header.get("stream") != stream:
        raise BatchRejected(f"header stream {header.get('stream')!r} does not match the topic ({stream!r})")
    for name in ("boot_id", "seq"):
        if name not in header:
            raise BatchRejected(f"header has no {name}")
    epoch = header.get("store_epoch")
    if epoch is not None and (not isinstance(epoch, str) or len(epoch) > MAX_EPOCH_CHARS):
        raise BatchRejected(f"header store_epoch {repr(epoch)[:40]} is not text of at most {MAX_EPOCH_CHARS} "
                            "characters")
    for name, value in props.items():
        if name in PROPERTY_FIELDS and name not in header:
            raise BatchRejected(f"the MQTT user property {name} has no header field to match")
        if name in header and property_text(header[name]) != value:
            raise BatchRejected(f"header field {name} ({property_text(header[name])!r}) disagrees with "
                                f"the MQTT user property ({value!r})")


def check_fields(header: Mapping[str, Any]) -> None:
    """The header fields that go into the database, by type and range (BatchRejected naming the field).
    ``seq`` must be there (``_check_header``); the others may be absent."""
    for name, lowest in INTEGER_FIELDS.items():
        if name not in header:
            continue
        value = header[name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise BatchRejected(f"header {name} {repr(value)[:40]} is not an integer")
        if not lowest <= value <= SQLITE_MAX:
            raise BatchRejected(f"header {name} {repr(value)[:40]} is out of range ({lowest}..{SQLITE_MAX})")
    for name in TIME_FIELDS:
        value = header.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BatchRejected(f"header {name} {repr(value)[:40]} is not a finite number")
    categories = header.get("categories")
    if categories is not None and (not isinstance(categories, list)
                                   or not all(isinstance(c, str) for c in categories)):
        raise BatchRejected(f"header categories {repr(categories)[:40]} is not a list of text")
    dictionary = header.get("zstd_dict")
    if dictionary is not None and not isinstance(dictionary, str):
        raise BatchRejected(f"header zstd_dict {repr(dictionary)[:40]} is not text")


@dataclass(frozen=True)
class VerifiedBatch:
    row: BatchRow
    samples: Iterator[SampleRow]
    # Set when the zstd dictionary is missing: its id (the samples are then empty).
    needs_dictionary: str | None = None


def sample_rows(decoded: DecodedBatch, categories: list[str],
                categories_of: Mapping[str, str] | None) -> Iterator[SampleRow]:
    """Receiver rows of a decoded batch.  ``categories_of`` maps signal key to privacy
    category (from a catalog); without it a sample gets its batch's category when the
    batch has exactly one, else ``mixed``."""
    fallback = categories[0] if len(categories) == 1 else "mixed"
    lookup = categories_of or {}
    for timestamp, bus, key, value, raw in iter_samples(decoded):
        yield timestamp, bus, key, lookup.get(key, fallback), _storable(value), _storable(raw)


def _storable(value: object) -> object:
    """An integer past SQLite's 64-bit signed range (a 64-bit unsigned CAN signal can be) is kept as its
    decimal text, exactly; binding it as a number would raise OverflowError."""
    if isinstance(value, int) and not isinstance(value, bool) and not SQLITE_MIN <= value <= SQLITE_MAX:
        return str(value)
    return value


def batch_categories(header: Mapping[str, Any]) -> list[str]:
    return sorted(str(c) for c in header.get("categories") or [UNCLASSIFIED])


def verify_batch(vehicle: str, stream: str, payload: bytes, props: Mapping[str, str], received: float,
                 dictionaries: Mapping[str, bytes] | None = None,
                 categories_of: Mapping[str, str] | None = None) -> VerifiedBatch:
    """Verify and decode one batch; raises BatchRejected."""
    expected = props.get(PAYLOAD_SHA256)
    actual = hashlib.sha256(payload).hexdigest()
    if expected is not None and actual != expected:
        raise BatchRejected(f"payload SHA-256 {actual} does not match the {PAYLOAD_SHA256} property "
                            f"{expected} (damaged in transit)")
    try:
        header, _body = decode_envelope(payload)
    except BatchError as exc:
        raise BatchRejected(str(exc)) from None
    _check_header(header, vehicle, stream, props)
    check_fields(header)
    needs = header.get("zstd_dict")
    decoded = None
    if not needs or needs in (dictionaries or {}):
        try:
            decoded = decode_batch(payload, dictionaries)
        except BatchError as exc:
            raise BatchRejected(str(exc)) from None
    categories = batch_categories(header)
    created = header.get("created")
    try:
        row = BatchRow(
            vehicle=vehicle,
            boot_id=str(header["boot_id"]),
            seq=header["seq"],
            stream=stream,
            stream_seq=header.get("stream_seq"),
            priority=header.get("priority", 0),
            categories=",".join(categories),
            sha256=str(header["sha256"]),
            bytes=len(payload),
            samples=header.get("samples", 0),
            t_first=_time(header.get("t_min")),
            t_last=_time(header.get("t_max")),
            closed=_time(created),
            received=received,
            latency=None if created is None else received - created,
            consent_version=None if header.get("consent_version") is None else str(header["consent_version"]),
            decoded=decoded is not None,
            store_epoch=str(header.get("store_epoch") or ""),
            payload_sha256=actual,
        )
    except (TypeError, ValueError) as exc:
        raise BatchRejected(f"header field has the wrong type: {exc}") from None
    if decoded is None:
        return VerifiedBatch(row, iter(()), str(needs))
    return VerifiedBatch(row, sample_rows(decoded, categories, categories_of))


def _time(value: float | None) -> float | None:
    return None if value is None else float(value)  # an int of any size fits a REAL column as a float


def decode_late(payload: bytes, dictionaries: Mapping[str, bytes],
                categories_of: Mapping[str, str] | None = None) -> Iterator[SampleRow]:
    """Samples of an already verified batch, now that its dictionary is known."""
    decoded = decode_batch(payload, dictionaries)
    return sample_rows(decoded, batch_categories(decoded.header), categories_of)
