"""Verify one received batch and turn it into rows for the receiver's database.

Checks, in order (any failure rejects the message as corrupt, with the reason):

1. the whole payload matches the ``payload_sha256`` user property (when the
   sender set it, as the agent does): a damaged byte anywhere is caught here;
2. the envelope parses and the body matches ``header.sha256`` (``decode_envelope``);
3. the header agrees with the topic (vehicle, stream) and with every MQTT user
   property that repeats a header field;
4. the body decompresses and decodes (``decode_batch``).  A batch compressed with
   a zstd dictionary the receiver does not have yet is kept (it is verified) and
   decoded when the dictionary arrives (the vehicle publishes it, retained, on
   ``.../v1/dictionary/<sha256>``); until then the report counts it ``undecoded``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from agent.batch.format import BatchError, DecodedBatch, decode_batch, decode_envelope, iter_samples
from agent.model import UNCLASSIFIED
from agent.uplink.properties import PAYLOAD_SHA256, PROPERTY_FIELDS, property_text
from simulator.receiver.store import BatchRow, SampleRow


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
    for name, value in props.items():
        if name in PROPERTY_FIELDS and name not in header:
            raise BatchRejected(f"the MQTT user property {name} has no header field to match")
        if name in header and property_text(header[name]) != value:
            raise BatchRejected(f"header field {name} ({property_text(header[name])!r}) disagrees with "
                                f"the MQTT user property ({value!r})")


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
        yield timestamp, bus, key, lookup.get(key, fallback), value, raw


def batch_categories(header: Mapping[str, Any]) -> list[str]:
    return sorted(str(c) for c in header.get("categories") or [UNCLASSIFIED])


def verify_batch(vehicle: str, stream: str, payload: bytes, props: Mapping[str, str], received: float,
                 dictionaries: Mapping[str, bytes] | None = None,
                 categories_of: Mapping[str, str] | None = None) -> VerifiedBatch:
    """Verify and decode one batch; raises BatchRejected."""
    expected = props.get(PAYLOAD_SHA256)
    if expected is not None:
        actual = hashlib.sha256(payload).hexdigest()
        if actual != expected:
            raise BatchRejected(f"payload SHA-256 {actual} does not match the {PAYLOAD_SHA256} property "
                                f"{expected} (damaged in transit)")
    try:
        header, _body = decode_envelope(payload)
    except BatchError as exc:
        raise BatchRejected(str(exc)) from None
    _check_header(header, vehicle, stream, props)
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
            seq=int(header["seq"]),
            stream=stream,
            stream_seq=int(header["stream_seq"]) if "stream_seq" in header else None,
            priority=int(header.get("priority", 0)),
            categories=",".join(categories),
            sha256=str(header["sha256"]),
            bytes=len(payload),
            samples=int(header.get("samples", 0)),
            t_first=header.get("t_min"),
            t_last=header.get("t_max"),
            closed=created,
            received=received,
            latency=(received - created) if isinstance(created, (int, float)) else None,
            consent_version=None if header.get("consent_version") is None else str(header["consent_version"]),
            decoded=decoded is not None,
        )
    except (TypeError, ValueError) as exc:
        raise BatchRejected(f"header field has the wrong type: {exc}") from None
    if decoded is None:
        return VerifiedBatch(row, iter(()), str(needs))
    return VerifiedBatch(row, sample_rows(decoded, categories, categories_of))


def decode_late(payload: bytes, dictionaries: Mapping[str, bytes],
                categories_of: Mapping[str, str] | None = None) -> Iterator[SampleRow]:
    """Samples of an already verified batch, now that its dictionary is known."""
    decoded = decode_batch(payload, dictionaries)
    return sample_rows(decoded, batch_categories(decoded.header), categories_of)
