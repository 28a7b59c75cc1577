"""What of a camera event may leave the car, and in what form.

* ``cabin`` events never leave (not even in bench mode: cabin can never be granted).
* Exterior events leave only while ``camera`` is granted.
* No pixel data is ever uploaded, and no local clip path: the record is metadata.
* An event whose clip shows faces or plates and is not anonymised leaves as
  metadata only: no clip reference (hash, size) that would let the clip be
  identified or requested, just what happened, when, and the counts.
* Location leaves only while ``location`` is granted, coarsened to the owner's
  level exactly as telemetry positions are (``agent.privacy.transforms``), and
  never from inside a privacy zone; the accuracy never leaves.

Camera events are their own stream (``camera``) with a priority above telemetry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from agent.camera.events import CameraEvent
from agent.privacy.decision import position_form

CAMERA_STREAM = "camera"
# Telemetry campaigns default to priority 0; camera events go first, incidents before them.
CAMERA_PRIORITY = 50


class ConsentLike(Protocol):
    """What the camera rules read from ``agent.privacy.policy.ConsentPolicy``."""

    clock: Callable[[], float]
    bench: bool

    def is_granted(self, category: str, now: float | None = None) -> bool: ...

    def level(self, category: str) -> str | None: ...

    @property
    def view(self) -> Any: ...


@dataclass(frozen=True)
class Outgoing:
    """A camera event as it may be uploaded: metadata only."""

    stream: str
    priority: int
    timestamp: float
    record: dict[str, Any]
    categories: frozenset[str]


def camera_decision(event: CameraEvent, policy: ConsentLike, now: float | None = None) -> Outgoing | None:
    """The record to upload for ``event``, or None when it stays in the car."""
    if not event.exterior:
        return None
    when = policy.clock() if now is None else now
    if not policy.view.is_granted("camera", when):
        return None
    metadata_only = event.shows_people_or_plates and not event.anonymised
    record: dict[str, Any] = {
        "event_id": event.event_id,
        "time": event.time,
        "camera": event.camera,
        "trigger": event.trigger,
        "faces": event.faces,
        "plates": event.plates,
        "anonymised": event.anonymised,
        "metadata_only": metadata_only,
        "clip": {"duration_s": event.clip.duration_s, "resolution": event.clip.resolution},
    }
    if not metadata_only:
        record["clip"].update(sha256=event.clip.sha256, size=event.clip.size)
    categories = {"camera"}
    location = _location(event, policy, when)
    if location is not None:
        record["location"] = location
        categories.add("location")
    return Outgoing(CAMERA_STREAM, CAMERA_PRIORITY, event.time, record, frozenset(categories))


def _location(event: CameraEvent, policy: ConsentLike, now: float) -> dict[str, Any] | None:
    if event.location is None:
        return None
    view = policy.view
    form = position_form(view, event.location.lat, event.location.lon, now)
    if form is None:
        return None
    level = view.level("location") or "exact (bench)"
    return {"lat": form[0], "lon": form[1], "level": level}
