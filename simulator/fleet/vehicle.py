"""One simulated vehicle: the agent's data path and uplink on frames decoded once per process."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path

from agent import shipped
from agent.buffer.store import BatchStore
from agent.catalog import load_catalogs
from agent.collect import CollectionPlan
from agent.dbc import load_dbc
from agent.decode import Decoder
from agent.flow.build import collect_to_store, store_entry, wake_on_write
from agent.flow.pipeline import BatchingOptions
from agent.model import DecodedFrame
from agent.privacy import ConsentPolicy, Pseudonymizer
from agent.sources.log import LogSource
from agent.uplink.config import AllowedBroker, BrokerAddress, UplinkConfig
from agent.uplink.mqtt import Uplink
from simulator.fleet.plan import REGION, FleetLog, FleetOptions, VehiclePlan
from simulator.fleet.report import VehicleReport


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
        gate, self.writer = store_entry(self.store, self.policy, None, plan.boot_id)
        # The agent's own joints (agent.flow.build), with the agent's default batch timestamps' resolution.
        batching = BatchingOptions(max_age_s=options.batch_age_s, max_bytes=options.max_bytes)
        self.collector, self.privacy, self.batcher = collect_to_store(
            CollectionPlan(campaigns=()), specs, self.policy, Pseudonymizer(plan.key), self.writer, plan.vehicle_id,
            batching)
        broker = BrokerAddress(options.broker_host, options.broker_port)
        config = UplinkConfig(region=REGION, broker=broker,
                              allowed_brokers=[AllowedBroker(broker.host, broker.port, region=REGION)],
                              allow_plaintext_loopback=True, in_flight=options.in_flight, backoff_min=0.2,
                              backoff_max=2.0, rejected_retry=5.0, topic_prefix=options.topic_prefix)
        self.uplink = Uplink(config, self.store, plan.vehicle_id, gate=gate)
        wake_on_write(self.writer, self.uplink)
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


