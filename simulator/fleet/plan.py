"""Which vehicles a simulated fleet has: their logs, identities, consent and start points."""

from __future__ import annotations

import math
import os
import random
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

from agent import shipped
from agent.privacy import Pseudonymizer

KONA_LOG = "logs/kona_ev_2020_comp_can_heating_clock_reset.log"
# Profiles of granted categories; vehicle_health is in every one (every log here carries it).
PROFILES = (("vehicle_health", "driving", "location"), ("vehicle_health",), ("vehicle_health", "driving"),
            ("vehicle_health", "location"))
LOCATION_LEVELS = ("city", "geohash5", "round3")
VIN_CHARS = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"  # no I, O, Q
REGION = "fleet-sim"


@dataclass(frozen=True)
class FleetLog:
    """A real log, its buses (log channel -> bus name) and the shipped DBCs of each bus."""

    name: str
    path: str
    bus_map: dict[str, str]
    dbcs: dict[str, tuple[str, ...]]  # bus -> paths relative to agent.shipped.dbc_dir()
    j1939_buses: tuple[str, ...] = ()


def default_data_dir() -> Path | None:
    """``$VEHICLE_SIM_DATA``, else ``shared/data`` beside the checkout (where the project keeps it)."""
    env = os.environ.get("VEHICLE_SIM_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    return next((path for path in candidates if path.is_dir()), None)


def available_logs(data_dir: Path | None = None) -> dict[str, FleetLog]:
    logs = {"truck": FleetLog("truck", str(shipped.demo_log()), {"0": "truck", "1": "gps"},
                              {"truck": ("css-electronics/CSS-Electronics-SAE-J1939-DEMO.dbc",),
                               "gps": ("css-electronics/canmod-gps.dbc",)}, ("truck",))}
    data_dir = data_dir or default_data_dir()
    if data_dir is not None and (data_dir / KONA_LOG).is_file():
        logs["kona"] = FleetLog("kona", str(data_dir / KONA_LOG), {"*": "comp"}, {"comp": ("kona-ev/comp_can.dbc",)})
    return logs


@dataclass
class FleetOptions:
    vehicles: int = 5
    duration: float = 60.0  # seconds of driving per vehicle
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    processes: int = 1
    speed: float = math.inf
    seed: int = 0
    logs: tuple[str, ...] = ()  # names from available_logs(); empty: all available
    data_dir: Path | None = None
    batch_age_s: float = 10.0
    max_bytes: int = 65536
    in_flight: int = 16
    ack_timeout: float = 60.0  # after the last batch is committed
    topic_prefix: str = "vehicles"
    synchronous: str = "NORMAL"  # the buffers' SQLite synchronous mode
    work_dir: Path | None = None  # keep the buffers here (default: a temporary directory, removed)


@dataclass(frozen=True)
class VehiclePlan:
    vehicle_id: str
    key: bytes
    boot_id: str
    log: str
    offset: float  # where in its log the vehicle starts, as a fraction of the log
    stagger_s: float
    grants: tuple[str, ...]
    location_level: str | None


def fake_vin(rng: random.Random) -> str:
    return "".join(rng.choice(VIN_CHARS) for _ in range(17))


def plan_fleet(options: FleetOptions, logs: dict[str, FleetLog]) -> list[VehiclePlan]:
    """Who the vehicles are: log round-robin, offset, stagger and consent from ``seed``; keys are random."""
    rng = random.Random(options.seed)
    names = list(logs)
    plans = []
    for index in range(options.vehicles):
        key = secrets.token_bytes(32)
        vehicle_id = "v" + Pseudonymizer(key).vehicle_pseudonym(fake_vin(rng))[:32]  # as agent.flow.parts does
        log = names[index % len(names)]
        grants = rng.choice(PROFILES)
        level = rng.choice(LOCATION_LEVELS) if "location" in grants else None
        plans.append(VehiclePlan(vehicle_id, key, str(uuid.UUID(int=rng.getrandbits(128), version=4)), log,
                                 rng.random(), round(rng.uniform(0.0, 1.0), 3), grants, level))
    return plans


