"""Scripted drives with an incident and matching camera events, for the demo and the tests.

Two scenarios, both on the CSS Electronics demo truck (J1939 ``CCVS1``/``EEC1``
on channel ``can0``, the CANmod.gps module on ``can1``):

``hard-brake``
    Accelerate to 60 km/h, cruise, brake hard at ``brake_at`` (-8.5 m/s^2,
    ``gnss_imu.AccelerationX`` about -8.5) and hit an obstacle at ``impact_at``
    (about 14 km/h to 0 in 100 ms: ``CCVS1.WheelBasedVehicleSpeed`` drops by
    more than 8 km/h within 150 ms), then stand still.  Camera events: front
    ``hard_brake`` (plates visible, not anonymised), front ``collision``
    (anonymised), cabin ``collision`` and, later, a rear ``sentry`` event.
``sentry``
    Parked, ignition in sentry mode.  Someone walks up to the rear (rear
    ``sentry`` event, a face, not anonymised) and bumps the car at
    ``impact_at`` (an IMU jolt and a rear ``collision`` event); the cabin
    camera records too.

Every frame time lies on a microsecond grid (the resolution of a candump log)
so a log round trip keeps timestamps exactly.  Values are DBC raw values
encoded with cantools; the same seed always gives the same frames and events.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import can
from cantools.database.can import Message

from agent import shipped
from agent.camera.events import CameraEvent, ClipRef, Location, event_to_dict
from agent.dbc import load_dbc

TRUCK_DBC = shipped.dbc_file("css-electronics/CSS-Electronics-SAE-J1939-DEMO.dbc")
GPS_DBC = shipped.dbc_file("css-electronics/canmod-gps.dbc")
TRUCK_CHANNEL = "can0"
GPS_CHANNEL = "can1"
DEFAULT_START_TIME = 1_700_000_000.0
SCENARIOS = ("hard-brake", "sentry")
START_POSITION = (31.230400, 121.473700)  # lat, lon
GRAVITY = 9.81

# message -> (channel, period s, phase s): every period and phase is a whole number of microseconds.
SCHEDULE = {
    "CCVS1": (TRUCK_CHANNEL, 0.020, 0.000),
    "EEC1": (TRUCK_CHANNEL, 0.020, 0.005),
    "gnss_imu": (GPS_CHANNEL, 0.010, 0.000),
    "gnss_pos": (GPS_CHANNEL, 0.100, 0.003),
    "gnss_speed": (GPS_CHANNEL, 0.100, 0.004),
    "gnss_attitude": (GPS_CHANNEL, 0.100, 0.006),
    "gnss_altitude": (GPS_CHANNEL, 1.000, 0.007),
    "gnss_status": (GPS_CHANNEL, 1.000, 0.008),
    "gnss_time": (GPS_CHANNEL, 1.000, 0.009),
    "gnss_odo": (GPS_CHANNEL, 1.000, 0.011),
}


@dataclass(frozen=True)
class Profile:
    """Speed (m/s) and longitudinal acceleration (m/s^2) over scenario time; the bump adds a jolt."""

    name: str
    duration: float
    brake_at: float | None
    impact_at: float
    cruise_mps: float
    brake_decel: float = 8.5
    impact_s: float = 0.100
    accelerate_s: float = 15.0
    jolt: float = 0.0  # sentry: acceleration spike (m/s^2) over impact_s at impact_at

    def speed(self, t: float) -> float:
        if self.brake_at is None:
            return 0.0
        if t < self.accelerate_s:
            return self.cruise_mps * t / self.accelerate_s
        if t < self.brake_at:
            return self._cruise(t)
        at_brake = self._cruise(self.brake_at)
        if t < self.impact_at:
            return max(0.0, at_brake - self.brake_decel * (t - self.brake_at))
        at_impact = max(0.0, at_brake - self.brake_decel * (self.impact_at - self.brake_at))
        if t < self.impact_at + self.impact_s:
            return at_impact * (1.0 - (t - self.impact_at) / self.impact_s)
        return 0.0

    def _cruise(self, t: float) -> float:
        # A gentle wave that starts at zero, so speed is continuous where acceleration ends.
        return self.cruise_mps + 0.3 * math.sin((t - self.accelerate_s) / 3.0)

    def acceleration(self, t: float) -> float:
        step = 0.005
        if self.jolt and self.impact_at <= t < self.impact_at + self.impact_s:
            return self.jolt
        return (self.speed(t + step) - self.speed(t - step)) / (2 * step) if t >= step else 0.0


def profile_for(name: str) -> Profile:
    if name == "hard-brake":
        return Profile(name, duration=60.0, brake_at=40.0, impact_at=41.5, cruise_mps=60 / 3.6)
    if name == "sentry":
        return Profile(name, duration=60.0, brake_at=None, impact_at=30.0, cruise_mps=0.0, jolt=6.0, impact_s=0.05)
    raise ValueError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")


@dataclass
class Scenario:
    name: str
    seed: int
    start_time: float
    profile: Profile
    events: list[CameraEvent]
    truth: dict[str, Any] = field(default_factory=dict)

    def frames(self) -> Iterator[can.Message]:
        return _frames(self)


def _micro(t: float) -> float:
    return round(t, 6)


def _clip(rng: random.Random, event_id: str, seed: int, resolution: tuple[int, int]) -> ClipRef:
    digest = hashlib.sha256(f"{seed}:{event_id}".encode()).hexdigest()
    return ClipRef(digest, rng.randint(8_000_000, 40_000_000), 30.0, resolution[0], resolution[1],
                   f"/media/camera/clips/{event_id}.mp4")


def _events(name: str, seed: int, start: float, profile: Profile, position_at: PositionTrack) -> list[CameraEvent]:
    rng = random.Random(seed ^ 0xC0FFEE)
    plan: list[tuple[float, str, str, int, int, bool]]  # (time, camera, trigger, faces, plates, anonymised)
    if name == "hard-brake":
        assert profile.brake_at is not None
        plan = [(profile.brake_at, "front", "hard_brake", 0, 2, False),
                (profile.impact_at, "front", "collision", 1, 1, True),
                (profile.impact_at, "cabin", "collision", 1, 0, False),
                (55.0, "rear", "sentry", 0, 1, True)]
    else:
        plan = [(profile.impact_at - 4.0, "rear", "sentry", 1, 0, False),
                (profile.impact_at, "rear", "collision", 1, 1, False),
                (profile.impact_at + 0.5, "cabin", "sentry", 0, 0, False)]
    events = []
    for number, (t, camera, trigger, faces, plates, anonymised) in enumerate(plan, start=1):
        event_id = f"{name}-{seed}-{number:02d}-{camera}-{trigger}"
        lat, lon = position_at(t)
        resolution = (1280, 720) if camera == "cabin" else (1920, 1080)
        events.append(CameraEvent(event_id, _micro(start + t), camera, trigger,
                                  _clip(rng, event_id, seed, resolution), faces, plates, anonymised,
                                  Location(round(lat, 6), round(lon, 6), 2.5)))
    return events


class PositionTrack:
    """Position (heading east) from integrating the speed profile on a 10 ms grid."""

    STEP = 0.01

    def __init__(self, profile: Profile) -> None:
        self.lat0, self.lon0 = START_POSITION
        self.metres_per_deg_lon = 111_320.0 * math.cos(math.radians(self.lat0))
        self.distances = [0.0]
        for k in range(1, int(profile.duration / self.STEP) + 2):
            self.distances.append(self.distances[-1] + profile.speed((k - 0.5) * self.STEP) * self.STEP)

    def distance(self, t: float) -> float:
        return self.distances[min(len(self.distances) - 1, max(0, round(t / self.STEP)))]

    def __call__(self, t: float) -> tuple[float, float]:
        return self.lat0, self.lon0 + self.distance(t) / self.metres_per_deg_lon


def build_scenario(name: str, seed: int = 0, start_time: float = DEFAULT_START_TIME) -> Scenario:
    profile = profile_for(name)
    start = _micro(start_time)
    position = PositionTrack(profile)
    events = _events(name, seed, start, profile, position)
    truth = {
        "scenario": name, "seed": seed, "start_time": start, "duration_s": profile.duration,
        "end_time": _micro(start + profile.duration),
        "brake_at": None if profile.brake_at is None else _micro(start + profile.brake_at),
        "impact_at": _micro(start + profile.impact_at),
        "channels": {TRUCK_CHANNEL: "truck", GPS_CHANNEL: "gps"},
        "dbc": {TRUCK_CHANNEL: TRUCK_DBC.name, GPS_CHANNEL: GPS_DBC.name},
        "events": [event.event_id for event in events],
    }
    return Scenario(name, seed, start, profile, events, truth)


class _Signals:
    """Physical values of every scheduled message at scenario time t."""

    def __init__(self, scenario: Scenario) -> None:
        self.profile = scenario.profile
        self.start = scenario.start_time
        self.rng = random.Random(scenario.seed)
        self.position = PositionTrack(scenario.profile)
        self.parked = scenario.profile.brake_at is None

    def values(self, message: str, t: float) -> dict[str, float]:
        profile, rng = self.profile, self.rng
        speed = profile.speed(t)
        if message == "CCVS1":
            return {"WheelBasedVehicleSpeed": speed * 3.6}
        if message == "EEC1":
            return {"EngineSpeed": 0.0 if self.parked else 650.0 + speed * 3.6 * 22.0 + rng.uniform(-5, 5)}
        if message == "gnss_imu":
            return {"ImuValid": 1, "AccelerationX": profile.acceleration(t) + rng.gauss(0, 0.05),
                    "AccelerationY": rng.gauss(0, 0.08), "AccelerationZ": GRAVITY + rng.gauss(0, 0.05),
                    "AngularRateX": rng.gauss(0, 0.3), "AngularRateY": rng.gauss(0, 0.3),
                    "AngularRateZ": rng.gauss(0, 0.3)}
        if message == "gnss_pos":
            lat, lon = self.position(t)
            return {"PositionValid": 1, "Latitude": lat, "Longitude": lon, "PositionAccuracy": 2}
        if message == "gnss_speed":
            return {"SpeedValid": 1, "Speed": speed, "SpeedAccuracy": 0.05}
        if message == "gnss_attitude":
            return {"AttitudeValid": 1, "Roll": rng.gauss(0, 0.3), "Pitch": rng.gauss(0, 0.3), "Heading": 90.0,
                    "RollAccuracy": 0.5, "PitchAccuracy": 0.5, "HeadingAccuracy": 1.0}
        if message == "gnss_altitude":
            return {"AltitudeValid": 1, "Altitude": 12.0, "AltitudeAccuracy": 3}
        if message == "gnss_status":
            return {"FixType": 3, "Satellites": 14}
        if message == "gnss_time":
            return {"TimeValid": 1, "TimeConfirmed": 1, "Epoch": self.start + t}
        if message == "gnss_odo":
            trip = self.position.distance(t)
            return {"DistanceValid": 1, "DistanceTrip": trip, "DistanceAccuracy": 1, "DistanceTotal": 48_213}
        raise KeyError(message)


def _encode(message: Message, physical: dict[str, float]) -> bytes:
    raw = {}
    for signal in message.signals:
        value = physical[signal.name]
        lo, hi = signal.minimum, signal.maximum
        value = min(max(value, lo if lo is not None else value), hi if hi is not None else value)
        raw[signal.name] = round((value - signal.offset) / signal.scale)
    return message.encode(raw, scaling=False, padding=True, strict=True)


def _frames(scenario: Scenario) -> Iterator[can.Message]:
    messages = {m.name: m for path in (TRUCK_DBC, GPS_DBC) for m in load_dbc(path).database.messages}
    signals = _Signals(scenario)
    start_us = round(scenario.start_time * 1_000_000)
    duration_us = round(scenario.profile.duration * 1_000_000)
    heap = []
    for order, (name, (channel, period, phase)) in enumerate(SCHEDULE.items()):
        heap.append((round(phase * 1_000_000), order, name, channel, round(period * 1_000_000)))
    heapq.heapify(heap)
    while heap:
        t_us, order, name, channel, period_us = heapq.heappop(heap)
        if t_us >= duration_us:
            continue
        message = messages[name]
        data = _encode(message, signals.values(name, t_us / 1_000_000))
        yield can.Message(timestamp=(start_us + t_us) / 1_000_000, arbitration_id=message.frame_id,
                          is_extended_id=message.is_extended_frame, data=data, channel=channel)
        heapq.heappush(heap, (t_us + period_us, order, name, channel, period_us))


# -- output -----------------------------------------------------------------------------


def write_event(event: CameraEvent, directory: Path) -> Path:
    """Drop one record the way a camera system should: temporary name, then atomic rename."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{event.event_id}.json"
    temporary = directory / f".{event.event_id}.json.tmp"
    temporary.write_text(json.dumps(event_to_dict(event), indent=1) + "\n", encoding="utf-8")
    os.replace(temporary, target)
    return target


def write_scenario(scenario: Scenario, log_path: str | Path, camera_dir: str | Path) -> dict[str, Any]:
    """The drive as a log (format by suffix), the camera records, and ``<log>.scenario.json`` (ground truth)."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    writer = can.Logger(str(log_path))
    try:
        for msg in scenario.frames():
            writer.on_message_received(msg)
            counts[msg.channel] = counts.get(msg.channel, 0) + 1
    finally:
        writer.stop()
    for event in scenario.events:
        write_event(event, Path(camera_dir))
    truth = {**scenario.truth, "log": log_path.name, "camera_dir": str(camera_dir), "frames": counts}
    truth_path = log_path.with_name(log_path.name.split(".")[0] + ".scenario.json")
    truth_path.write_text(json.dumps(truth, indent=1) + "\n", encoding="utf-8")
    return truth
