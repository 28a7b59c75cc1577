"""GPX 1.1 track from decoded position samples.

Position arrives as separate latitude and longitude signals (often also
altitude, in another message).  A track point is emitted whenever both
latitude and longitude have a value and one of them was updated; altitude is
attached when known.  Points with an invalid-position flag are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from xml.etree import ElementTree

GPX_NS = "http://www.topografix.com/GPX/1/1"
# Signal roles by VSS path (from the catalogs); the DBC signal name is the fallback.
_VSS_ROLES = {
    "Vehicle.CurrentLocation.Latitude": "lat",
    "Vehicle.CurrentLocation.Longitude": "lon",
    "Vehicle.CurrentLocation.Altitude": "ele",
    "Vehicle.CurrentLocation.PositionValid": "valid",
}
_NAME_ROLES = {"latitude": "lat", "longitude": "lon", "altitude": "ele", "positionvalid": "valid"}


@dataclass(frozen=True, slots=True)
class Sample:
    """One decoded physical value (what the export writes per line)."""

    timestamp: float
    bus: str
    key: str  # Message.Signal
    vss: str
    value: int | float
    unit: str
    label: str | None
    category: str


@dataclass(frozen=True, slots=True)
class TrackPoint:
    timestamp: float
    lat: float
    lon: float
    ele: float | None = None


def _role(sample: Sample) -> str | None:
    return _VSS_ROLES.get(sample.vss) or _NAME_ROLES.get(sample.key.rsplit(".", 1)[-1].lower())


def track_points(samples: Iterable[Sample]) -> list[TrackPoint]:
    points: list[TrackPoint] = []
    lat = lon = ele = None
    valid = True
    for sample in samples:
        role = _role(sample)
        if role is None:
            continue
        if role == "valid":
            valid = bool(sample.value)
            continue
        if role == "ele":
            ele = float(sample.value)
            continue
        if role == "lat":
            lat = float(sample.value)
        else:
            lon = float(sample.value)
        if lat is None or lon is None or not valid:
            continue
        point = TrackPoint(sample.timestamp, lat, lon, ele)
        # A message carries latitude and longitude together: one point per frame, not two.
        if points and points[-1].timestamp == point.timestamp:
            points[-1] = point
        else:
            points.append(point)
    return points


def _iso(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def write_gpx(points: list[TrackPoint], path: str | Path, name: str) -> None:
    ElementTree.register_namespace("", GPX_NS)
    root = ElementTree.Element(f"{{{GPX_NS}}}gpx", {"version": "1.1", "creator": "vehicle-edge-agent"})
    track = ElementTree.SubElement(root, f"{{{GPX_NS}}}trk")
    ElementTree.SubElement(track, f"{{{GPX_NS}}}name").text = name
    segment = ElementTree.SubElement(track, f"{{{GPX_NS}}}trkseg")
    for point in points:
        element = ElementTree.SubElement(segment, f"{{{GPX_NS}}}trkpt",
                                         {"lat": f"{point.lat:.7f}", "lon": f"{point.lon:.7f}"})
        if point.ele is not None:
            ElementTree.SubElement(element, f"{{{GPX_NS}}}ele").text = f"{point.ele:.1f}"
        ElementTree.SubElement(element, f"{{{GPX_NS}}}time").text = _iso(point.timestamp)
    ElementTree.indent(root)
    Path(path).write_bytes(ElementTree.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n")
