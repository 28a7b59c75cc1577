"""The MQTT topic scheme (documented in docs/payload.md, "Topics").

    {prefix}/{vehicle_id}/v1/data/{stream}    batches, QoS 1, not retained
    {prefix}/{vehicle_id}/v1/status           retained JSON: birth "online", last will "offline"
    {prefix}/{vehicle_id}/v1/dictionary/{hex} retained zstd dictionary whose SHA-256 is {hex}
    {prefix}/{vehicle_id}/v1/commands         cloud -> vehicle: consent may only be narrowed here

``v1`` is the topic-scheme version: a receiver can subscribe to exactly the
versions it understands.  Vehicle ids and stream names are single topic levels,
so they may not contain ``/``, ``+``, ``#`` or NUL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME_VERSION = "v1"
DATA = "data"
STATUS = "status"
DICTIONARY = "dictionary"
COMMANDS = "commands"
_LEVEL = re.compile(r"^[A-Za-z0-9_.:-]+$")
_GROUP = re.compile(r"^[A-Za-z0-9_.-]+$")


def check_level(value: str, what: str) -> str:
    if not _LEVEL.match(value or ""):
        raise ValueError(f"{what} {value!r} cannot be an MQTT topic level (letters, digits, _ . : - only)")
    return value


def data_topic(prefix: str, vehicle_id: str, stream: str) -> str:
    return f"{prefix}/{check_level(vehicle_id, 'vehicle id')}/{SCHEME_VERSION}/{DATA}/{check_level(stream, 'stream')}"


def status_topic(prefix: str, vehicle_id: str) -> str:
    return f"{prefix}/{check_level(vehicle_id, 'vehicle id')}/{SCHEME_VERSION}/{STATUS}"


def commands_topic(prefix: str, vehicle_id: str) -> str:
    return f"{prefix}/{check_level(vehicle_id, 'vehicle id')}/{SCHEME_VERSION}/{COMMANDS}"


def dictionary_topic(prefix: str, vehicle_id: str, dictionary_id: str) -> str:
    """``dictionary_id`` as in batch headers: ``sha256:<hex>``; the topic level is the hex."""
    digest = check_level(dictionary_id.removeprefix("sha256:"), "dictionary id")
    return f"{prefix}/{check_level(vehicle_id, 'vehicle id')}/{SCHEME_VERSION}/{DICTIONARY}/{digest}"


def _shared(topic_filter: str, shared_group: str | None) -> str:
    if not shared_group:
        return topic_filter
    if not _GROUP.match(shared_group):
        raise ValueError(f"shared subscription group {shared_group!r}: letters, digits, _ . - only")
    return f"$share/{shared_group}/{topic_filter}"


def data_filter(prefix: str, shared_group: str | None = None) -> str:
    """All vehicles' batches; with a group, MQTT v5 shared subscription (receivers split the fleet)."""
    return _shared(f"{prefix}/+/{SCHEME_VERSION}/{DATA}/+", shared_group)


def status_filter(prefix: str) -> str:
    # Never shared: every receiver wants every vehicle's online/offline state.
    return f"{prefix}/+/{SCHEME_VERSION}/{STATUS}"


def dictionary_filter(prefix: str) -> str:
    # Never shared: every receiver needs every dictionary to decode its share of batches.
    return f"{prefix}/+/{SCHEME_VERSION}/{DICTIONARY}/+"


@dataclass(frozen=True)
class TopicParts:
    vehicle_id: str
    kind: str  # DATA, STATUS or DICTIONARY
    stream: str | None = None  # DATA: the stream; DICTIONARY: the dictionary's SHA-256 (hex)


def parse_topic(prefix: str, topic: str) -> TopicParts | None:
    """Split a received topic; None when it is not part of this scheme."""
    if not topic.startswith(prefix + "/"):
        return None
    levels = topic[len(prefix) + 1:].split("/")
    if len(levels) == 4 and levels[1] == SCHEME_VERSION and levels[2] in (DATA, DICTIONARY):
        return TopicParts(levels[0], levels[2], levels[3])
    if len(levels) == 3 and levels[1] == SCHEME_VERSION and levels[2] == STATUS:
        return TopicParts(levels[0], STATUS)
    return None
