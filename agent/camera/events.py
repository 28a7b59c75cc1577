"""Camera event records: the JSON schema (``docs/camera-events.md``) and its validation.

The camera system describes each recorded clip with one small JSON object; the
clip itself never enters the agent.  ``parse_event`` accepts exactly the
documented fields (unknown keys are refused: an unexpected field could carry
pixels, e.g. an embedded thumbnail) and raises ``CameraEventError`` naming the
source and the field of the first problem.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

SCHEMA_VERSION = 1
MAX_RECORD_BYTES = 64 * 1024  # a metadata record is a few hundred bytes; anything this large is not one
CAMERAS = ("front", "rear", "left", "right", "cabin")
TRIGGERS = ("sentry", "collision", "hard_brake", "manual", "motion", "proximity", "tamper")
MAX_COUNT = 10_000  # faces/plates per clip; larger counts are a broken detector, not a busy street

_EVENT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_RESOLUTION_RE = re.compile(r"([1-9][0-9]{0,4})x([1-9][0-9]{0,4})")
_FIELDS = {"version", "event_id", "time", "camera", "trigger", "clip", "faces", "plates", "anonymised", "location"}
_REQUIRED = ("event_id", "time", "camera", "trigger", "clip", "faces", "plates", "anonymised")
_CLIP_FIELDS = {"sha256", "size", "duration_s", "resolution", "path"}
_CLIP_REQUIRED = ("sha256", "size", "duration_s", "resolution")
_LOCATION_FIELDS = {"lat", "lon", "accuracy_m"}


class CameraEventError(ValueError):
    """A malformed camera event record.  ``field`` is the dotted path of the bad field
    (empty when the record as a whole is bad, e.g. not JSON)."""

    def __init__(self, source: str, field: str, problem: str) -> None:
        self.source = source
        self.field = field
        self.problem = problem
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True, slots=True)
class ClipRef:
    """Reference to a clip held by the camera system (the agent never reads the clip)."""

    sha256: str
    size: int
    duration_s: float
    width: int
    height: int
    path: str = ""  # where the camera system keeps it; local only, never uploaded

    @property
    def resolution(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass(frozen=True, slots=True)
class Location:
    lat: float
    lon: float
    accuracy_m: float | None = None


@dataclass(frozen=True, slots=True)
class CameraEvent:
    event_id: str
    time: float  # seconds since the Unix epoch (UTC)
    camera: str
    trigger: str
    clip: ClipRef
    faces: int
    plates: int
    anonymised: bool
    location: Location | None
    source: str = ""  # file or socket the record came from (for logs only)

    @property
    def exterior(self) -> bool:
        return self.camera != "cabin"

    @property
    def shows_people_or_plates(self) -> bool:
        return self.faces > 0 or self.plates > 0


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field: str, problem: str) -> CameraEventError:
        return CameraEventError(self.source, field, problem)

    def mapping(self, value: Any, field: str, allowed: set[str], required: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(field, f"expected an object, got {_kind(value)}")
        for key in value:
            if key not in allowed:
                raise self.fail(_join(field, key), f"unknown field (known: {', '.join(sorted(allowed))})")
        for key in required:
            if key not in value:
                raise self.fail(_join(field, key), "missing")
        return value

    def integer(self, value: Any, field: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(field, f"expected an integer, got {_kind(value)} {value!r}")
        if not low <= value <= high:
            raise self.fail(field, f"must be between {low} and {high}, got {value}")
        return value

    def number(self, value: Any, field: str, low: float, high: float) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(field, f"expected a number, got {_kind(value)} {value!r}")
        number = float(value)
        if not math.isfinite(number) or not low <= number <= high:
            raise self.fail(field, f"must be between {low:g} and {high:g}, got {value!r}")
        return number

    def text(self, value: Any, field: str) -> str:
        if not isinstance(value, str):
            raise self.fail(field, f"expected text, got {_kind(value)}")
        return value

    def choice(self, value: Any, field: str, choices: tuple[str, ...]) -> str:
        text = self.text(value, field)
        if text not in choices:
            raise self.fail(field, f"must be one of {', '.join(choices)}, got {text!r}")
        return text


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "true/false", type(None): "null"}.get(
        type(value), type(value).__name__)


def _join(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def parse_time(value: Any, check: _Checker, field: str = "time") -> float:
    """Epoch seconds (number) or RFC 3339 text with an explicit offset (``...Z`` or ``+02:00``)."""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise check.fail(field, f"not an RFC 3339 time: {value!r}") from None
        if moment.tzinfo is None:
            raise check.fail(field, f"time needs a UTC offset (e.g. Z): {value!r}")
        seconds = moment.timestamp()
    else:
        seconds = check.number(value, field, 0.0, 4.0e9)
    if not 946_684_800.0 <= seconds <= 4.0e9:  # 2000-01-01 .. 2096: anything else is a clock fault
        raise check.fail(field, f"implausible time {value!r} (before 2000 or after 2096)")
    return seconds


def _clip(value: Any, check: _Checker) -> ClipRef:
    clip = check.mapping(value, "clip", _CLIP_FIELDS, _CLIP_REQUIRED)
    sha256 = check.text(clip["sha256"], "clip.sha256")
    if not _SHA256_RE.fullmatch(sha256):
        raise check.fail("clip.sha256", "expected 64 lowercase hex digits")
    size = check.integer(clip["size"], "clip.size", 1, 1 << 40)
    duration = check.number(clip["duration_s"], "clip.duration_s", 0.001, 86_400.0)
    resolution = check.text(clip["resolution"], "clip.resolution")
    match = _RESOLUTION_RE.fullmatch(resolution)
    if not match:
        raise check.fail("clip.resolution", f"expected WIDTHxHEIGHT such as 1920x1080, got {resolution!r}")
    path = check.text(clip.get("path", ""), "clip.path")
    if len(path) > 4096 or "\x00" in path:
        raise check.fail("clip.path", "too long or contains NUL")
    return ClipRef(sha256, size, duration, int(match.group(1)), int(match.group(2)), path)


def _location(value: Any, check: _Checker) -> Location | None:
    if value is None:
        return None
    location = check.mapping(value, "location", _LOCATION_FIELDS, ("lat", "lon"))
    lat = check.number(location["lat"], "location.lat", -90.0, 90.0)
    lon = check.number(location["lon"], "location.lon", -180.0, 180.0)
    accuracy = location.get("accuracy_m")
    if accuracy is not None:
        accuracy = check.number(accuracy, "location.accuracy_m", 0.0, 100_000.0)
    return Location(lat, lon, accuracy)


def event_from_dict(data: Any, source: str) -> CameraEvent:
    check = _Checker(source)
    record = check.mapping(data, "", _FIELDS, _REQUIRED)
    if "version" in record:
        check.integer(record["version"], "version", SCHEMA_VERSION, SCHEMA_VERSION)
    event_id = check.text(record["event_id"], "event_id")
    if not _EVENT_ID_RE.fullmatch(event_id):
        raise check.fail("event_id", "expected 1-128 characters: letters, digits, . _ : - (not first)")
    anonymised = record["anonymised"]
    if not isinstance(anonymised, bool):
        raise check.fail("anonymised", f"expected true or false, got {_kind(anonymised)} {anonymised!r}")
    return CameraEvent(
        event_id=event_id,
        time=parse_time(record["time"], check),
        camera=check.choice(record["camera"], "camera", CAMERAS),
        trigger=check.choice(record["trigger"], "trigger", TRIGGERS),
        clip=_clip(record["clip"], check),
        faces=check.integer(record["faces"], "faces", 0, MAX_COUNT),
        plates=check.integer(record["plates"], "plates", 0, MAX_COUNT),
        anonymised=anonymised,
        location=_location(record.get("location"), check),
        source=source,
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two values for one key would let a record say "anonymised" twice; refuse it.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def parse_event(data: bytes, source: str) -> CameraEvent:
    """Validate one JSON record; ``CameraEventError`` names ``source`` and the bad field."""
    if len(data) > MAX_RECORD_BYTES:
        raise CameraEventError(source, "", f"record too large ({len(data)} bytes, limit {MAX_RECORD_BYTES})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CameraEventError(source, "", f"not UTF-8 (byte {exc.start})") from None
    try:
        parsed = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except (json.JSONDecodeError, ValueError) as exc:
        position = f"line {exc.lineno} column {exc.colno}: " if isinstance(exc, json.JSONDecodeError) else ""
        problem = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise CameraEventError(source, "", f"not JSON: {position}{problem}") from None
    except RecursionError:
        raise CameraEventError(source, "", "not JSON: nested too deeply") from None
    return event_from_dict(parsed, source)


def event_to_dict(event: CameraEvent) -> dict[str, Any]:
    """The record as the camera system would write it (used by the simulator and tests)."""
    clip: dict[str, Any] = {"sha256": event.clip.sha256, "size": event.clip.size,
                            "duration_s": event.clip.duration_s, "resolution": event.clip.resolution}
    if event.clip.path:
        clip["path"] = event.clip.path
    record: dict[str, Any] = {"version": SCHEMA_VERSION, "event_id": event.event_id, "time": event.time,
                              "camera": event.camera, "trigger": event.trigger, "clip": clip,
                              "faces": event.faces, "plates": event.plates, "anonymised": event.anonymised}
    if event.location is not None:
        location: dict[str, Any] = {"lat": event.location.lat, "lon": event.location.lon}
        if event.location.accuracy_m is not None:
            location["accuracy_m"] = event.location.accuracy_m
        record["location"] = location
    return record
