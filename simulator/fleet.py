"""A fleet of simulated vehicles, each running the agent's own data path and uplink (issue 14).

Per vehicle, what ``agent.flow.build`` makes for one car, minus the CAN bus: decoded frames ->
Collector -> PrivacyFilter -> Batcher -> StoreWriter --ConsentGate--> BatchStore (its own, in a
temporary directory) -> Uplink (its own MQTT client id, topics vehicles/<id>/v1/...) -> broker.  Each
has its own pseudonymous id (``vehicle_pseudonym`` of a fake VIN under a random key, as the agent
derives it), boot id and consent (granted categories and location level vary by ``seed``).

The data is real: the bundled CSS truck log (J1939 + GPS) and, with the shared data, the Kona EV
COMP-CAN log, decoded once per process with the shipped DBCs and catalogs.  Vehicles differ by log
and starting point; values are never altered.  A vehicle's clock starts at ``t0`` plus a stagger
below 1 s; steps back in a log's clock (the Kona logger resets) count as no time; at the end of its
log a vehicle goes on from the start.  ``speed`` inf (``--speed max``) runs as fast as it goes, the
data being "the last ``duration`` seconds"; a finite speed paces every vehicle (1: real time).
"""

from __future__ import annotations

import bisect
import math
import multiprocessing
import os
import random
import secrets
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent import shipped
from agent.batch import Batcher
from agent.buffer.store import BatchStore
from agent.catalog import load_catalogs
from agent.collect import CollectionPlan, Collector
from agent.dbc import load_dbc
from agent.decode import Decoder
from agent.flow.gate import ConsentGate
from agent.flow.writer import StoreWriter
from agent.model import DecodedFrame
from agent.privacy import ConsentPolicy, PrivacyFilter, Pseudonymizer
from agent.sources.log import LogSource
from agent.uplink.config import AllowedBroker, BrokerAddress, UplinkConfig
from agent.uplink.mqtt import Uplink

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


@dataclass
class VehicleReport:
    vehicle_id: str
    log: str
    offset_s: float
    boot_id: str
    granted: list[str]
    location_level: str | None
    frames: int = 0
    batches_committed: int = 0
    batches_acked: int = 0
    batches_rejected: int = 0
    batches_unacked: int = 0
    samples: int = 0
    bytes: int = 0
    categories_sent: list[str] = field(default_factory=list)
    first_timestamp: float | None = None
    last_error: str | None = None


@dataclass
class FleetReport:
    vehicles: int
    processes: int
    speed: str
    duration_s: float
    batches_committed: int
    batches_acked: int
    batches_unacked: int
    batches_rejected: int
    samples: int
    bytes: int
    elapsed_s: float
    setup_s: float
    batches_per_s: float
    samples_per_s: float
    logs: list[str]
    per_vehicle: list[VehicleReport]

    @property
    def ok(self) -> bool:
        return self.batches_unacked == 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"fleet: {self.vehicles} vehicles in {self.processes} process(es), speed {self.speed}, "
                 f"{self.duration_s:g} s of driving each ({', '.join(self.logs)})",
                 f"  batches committed {self.batches_committed}, acknowledged {self.batches_acked} (PUBACK), "
                 f"unacknowledged {self.batches_unacked}, rejected {self.batches_rejected}",
                 f"  samples {self.samples}, bytes {self.bytes}, elapsed {self.elapsed_s:.2f} s "
                 f"(setup {self.setup_s:.2f} s), {self.batches_per_s:.1f} batches/s, "
                 f"{self.samples_per_s:.0f} samples/s"]
        lines += [f"  unacknowledged: {v.vehicle_id} {v.batches_unacked} batch(es)"
                  + (f" ({v.last_error})" if v.last_error else "") for v in self.per_vehicle if v.batches_unacked]
        return "\n".join(lines)


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


@dataclass
class DecodedLog:
    decoder: Decoder
    elapsed: list[float]  # per frame: seconds since the first frame, monotonic
    frames: list[DecodedFrame]
    period: float  # one pass over the log, then it starts again


def log_decoder(log: FleetLog) -> Decoder:
    """Every signal of the log's shipped DBCs, with the categories of their catalogs."""
    bus_dbcs = {bus: [load_dbc(shipped.dbc_file(path)) for path in paths] for bus, paths in log.dbcs.items()}
    return Decoder(bus_dbcs, load_catalogs(bus_dbcs, []), j1939_buses=log.j1939_buses)


def signal_categories(logs: dict[str, FleetLog]) -> dict[str, str]:
    """Signal key -> privacy category over these logs (a receiver's ``categories_of``)."""
    return {key: spec.category for log in logs.values() for key, spec in log_decoder(log).specs.items()}


def decode_log(log: FleetLog) -> DecodedLog:
    decoder = log_decoder(log)
    elapsed: list[float] = []
    frames: list[DecodedFrame] = []
    clock, previous = 0.0, None
    for bus, msg in LogSource(log.path, log.bus_map):
        if previous is not None and msg.timestamp > previous:
            clock += msg.timestamp - previous
        previous = msg.timestamp
        frame = decoder.decode(msg, bus)
        if frame is not None:
            elapsed.append(clock)
            frames.append(frame)
    if not frames:
        raise ValueError(f"{log.path}: the DBCs decode no frame of this log")
    gap = clock / len(frames)
    return DecodedLog(decoder, elapsed, frames, clock + gap)


class SimVehicle:
    """One vehicle: the agent's data path and uplink over decoded frames of a shared log."""

    def __init__(self, plan: VehiclePlan, decoded: DecodedLog, options: FleetOptions, directory: Path,
                 origin: float) -> None:
        self.plan = plan
        self.decoded = decoded
        self.origin = origin + plan.stagger_s
        specs = decoded.decoder.specs
        self.policy = ConsentPolicy(None)  # in memory; the same rules as the owner's durable consent
        for category in plan.grants:
            self.policy.grant(category, "90d", level=plan.location_level if category == "location" else None,
                              purpose="fleet simulation")
        self.store = BatchStore(directory / f"{plan.vehicle_id}.sqlite", synchronous=options.synchronous)
        gate = ConsentGate(self.policy, None, self.store)
        self.writer = StoreWriter(self.store, gate, plan.boot_id)
        self.batcher = Batcher(specs, self.writer.write, plan.vehicle_id, numbering=self.writer.numbers,
                               max_age_s=options.batch_age_s, max_bytes=options.max_bytes,
                               consent_version=self.policy.version)
        privacy = PrivacyFilter(self.policy, specs, self.batcher, Pseudonymizer(plan.key),
                                on_version_change=lambda _c: self.batcher.consent_changed(privacy.consent_version))
        self.privacy = privacy
        self.collector = Collector(CollectionPlan(campaigns=()), specs, privacy)
        broker = BrokerAddress(options.broker_host, options.broker_port)
        config = UplinkConfig(region=REGION, broker=broker,
                              allowed_brokers=[AllowedBroker(broker.host, broker.port, region=REGION)],
                              allow_plaintext_loopback=True, in_flight=options.in_flight, backoff_min=0.2,
                              backoff_max=2.0, rejected_retry=5.0, topic_prefix=options.topic_prefix)
        self.uplink = Uplink(config, self.store, plan.vehicle_id, gate=gate)
        self.writer.listeners.append(lambda _id, _batch: self.uplink.notify())
        self.categories: set[str] = set()
        self.writer.listeners.append(lambda _id, batch: self.categories.update(batch.header["categories"]))
        self.frames_fed = 0
        self.first_timestamp: float | None = None
        self.offset_s = round(plan.offset * decoded.period, 3)
        first = bisect.bisect_left(decoded.elapsed, self.offset_s)
        # Vehicle time of frame i is elapsed[i] + base; past the last frame it goes on from the first.
        self._pos, self._base = (first, -self.offset_s) if first < len(decoded.frames) else \
            (0, decoded.period - self.offset_s)

    def advance(self, until: float) -> None:
        """Feed every frame whose vehicle time (seconds since this vehicle started) is below ``until``."""
        elapsed, frames, count = self.decoded.elapsed, self.decoded.frames, len(self.decoded.frames)
        on_frame, origin, pos, base, fed = self.collector.on_frame, self.origin, self._pos, self._base, 0
        while True:
            if pos >= count:
                pos, base = 0, base + self.decoded.period
            at = elapsed[pos] + base
            if at >= until:
                break
            frame = frames[pos]
            # A new frame record per vehicle: the decoded values themselves are shared and never changed.
            on_frame(DecodedFrame(origin + at, frame.bus, frame.frame_id, frame.message, frame.raw))
            if self.first_timestamp is None:
                self.first_timestamp = origin + at
            pos += 1
            fed += 1
        self._pos, self._base = pos, base
        self.frames_fed += fed

    def tick(self) -> None:
        self.writer.retry()
        self.batcher.tick()

    def finish(self) -> None:
        self.collector.flush()
        self.batcher.flush()
        self.writer.retry()

    def unacked(self) -> int:
        return self.store.counters()["pending_batches"] + self.writer.waiting

    def report(self) -> VehicleReport:
        state = self.uplink.state()
        plan, counters = self.plan, self.writer.counters
        return VehicleReport(plan.vehicle_id, plan.log, self.offset_s, plan.boot_id, list(plan.grants),
                             plan.location_level, self.frames_fed, counters.batches_written, state["acked"],
                             state["rejected"], self.unacked(), counters.samples_written, counters.bytes_written,
                             sorted(self.categories), self.first_timestamp, state["last_error"])


class FleetWorker:
    """The vehicles of one process: ``setup`` (decode logs, open buffers, connect), then ``run``."""

    def __init__(self, options: FleetOptions, plans: list[VehiclePlan], logs: dict[str, FleetLog]) -> None:
        self.options, self.plans, self.logs = options, plans, logs
        self.vehicles: list[SimVehicle] = []
        self._tmp: tempfile.TemporaryDirectory | None = None

    def setup(self, connect_timeout: float = 20.0) -> None:
        options = self.options
        if options.work_dir is not None:
            directory = Path(options.work_dir)
            directory.mkdir(parents=True, exist_ok=True)
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="vehicle-sim-fleet-")
            directory = Path(self._tmp.name)
        decoded = {name: decode_log(self.logs[name]) for name in sorted({plan.log for plan in self.plans})}
        now = time.time()
        origin = now - options.duration if math.isinf(options.speed) else now
        self.vehicles = [SimVehicle(plan, decoded[plan.log], options, directory, origin) for plan in self.plans]
        for vehicle in self.vehicles:
            vehicle.uplink.start()
        deadline = time.monotonic() + connect_timeout
        while not all(v.uplink.state()["connected"] for v in self.vehicles):
            if time.monotonic() > deadline:
                errors = {v.plan.vehicle_id: v.uplink.state()["last_error"] for v in self.vehicles}
                raise ConnectionError(f"uplinks not connected within {connect_timeout:g} s: {errors}")
            time.sleep(0.02)

    def run(self) -> list[VehicleReport]:
        options, vehicles = self.options, self.vehicles
        paced = not math.isinf(options.speed)
        step = 0.25 if paced else 5.0
        start = time.monotonic()
        done = 0.0
        while done < options.duration:
            done = min(options.duration, done + step)
            for vehicle in vehicles:
                vehicle.advance(done)
            if paced:
                delay = start + done / options.speed - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                for vehicle in vehicles:
                    vehicle.tick()
        for vehicle in vehicles:
            vehicle.finish()
        deadline = time.monotonic() + options.ack_timeout
        while any(v.unacked() for v in vehicles) and time.monotonic() < deadline:
            time.sleep(0.02)
        return [vehicle.report() for vehicle in vehicles]

    def close(self) -> None:
        for vehicle in self.vehicles:
            vehicle.uplink.stop(timeout=2.0)
            vehicle.store.close()
        if self._tmp is not None:
            self._tmp.cleanup()


def _worker_main(options: FleetOptions, plans: list[VehiclePlan], logs: dict[str, FleetLog], ready: Any,
                 go: Any, results: Any) -> None:
    worker = FleetWorker(options, plans, logs)
    try:
        worker.setup()
        ready.put(None)
        go.wait()
        results.put((worker.run(), None))
    except Exception as exc:  # told to the parent, which would otherwise wait for its timeout
        ready.put(f"{type(exc).__name__}: {exc}")
        results.put(([], f"{type(exc).__name__}: {exc}"))
    finally:
        worker.close()


def run_fleet(options: FleetOptions) -> FleetReport:
    """Run the fleet; returns once every committed batch is acknowledged or ``ack_timeout`` has passed."""
    if options.vehicles < 1 or options.processes < 1 or not options.duration > 0:
        raise ValueError("need at least one vehicle, one process and a positive duration")
    known = available_logs(options.data_dir)
    unknown = [name for name in options.logs if name not in known]
    if unknown:
        raise ValueError(f"unknown or unavailable log(s) {', '.join(unknown)} (available: {', '.join(known)})")
    logs = {name: known[name] for name in (options.logs or tuple(known))}
    plans = plan_fleet(options, logs)
    processes = min(options.processes, options.vehicles)
    if processes == 1:
        worker = FleetWorker(options, plans, logs)
        try:
            started = time.monotonic()
            worker.setup()
            run_start = time.monotonic()
            reports = worker.run()
            setup_s, elapsed = run_start - started, time.monotonic() - run_start
        finally:
            worker.close()
    else:
        reports, setup_s, elapsed = _run_processes(options, plans, logs, processes)
    acked = sum(r.batches_acked for r in reports)
    samples = sum(r.samples for r in reports)
    return FleetReport(
        options.vehicles, processes, "max" if math.isinf(options.speed) else f"{options.speed:g}", options.duration,
        sum(r.batches_committed for r in reports), acked, sum(r.batches_unacked for r in reports),
        sum(r.batches_rejected for r in reports), samples, sum(r.bytes for r in reports), round(elapsed, 3),
        round(setup_s, 3), round(acked / elapsed, 1) if elapsed > 0 else 0.0,
        round(samples / elapsed, 1) if elapsed > 0 else 0.0, list(logs), reports)


def _run_processes(options: FleetOptions, plans: list[VehiclePlan], logs: dict[str, FleetLog],
                   processes: int) -> tuple[list[VehicleReport], float, float]:
    # spawn, not fork: the caller may have threads (a receiver's network loop) that fork would copy mid-state.
    context = multiprocessing.get_context("spawn")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    started = time.monotonic()
    children = [context.Process(target=_worker_main, args=(options, plans[i::processes], logs, ready, go, results),
                                name=f"fleet-worker-{i}", daemon=True) for i in range(processes)]
    for child in children:
        child.start()
    try:
        problems = [problem for problem in (ready.get(timeout=120) for _ in children) if problem]
        if problems:
            go.set()
            raise RuntimeError("fleet worker failed: " + "; ".join(problems))
        setup_s = time.monotonic() - started
        run_start = time.monotonic()
        go.set()
        timeout = options.duration / (1.0 if math.isinf(options.speed) else options.speed) + options.ack_timeout + 120
        collected = [results.get(timeout=timeout) for _ in children]
        elapsed = time.monotonic() - run_start
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.terminate()
    errors = [error for _reports, error in collected if error]
    if errors:
        raise RuntimeError("fleet worker failed: " + "; ".join(errors))
    return [report for reports, _error in collected for report in reports], setup_s, elapsed
