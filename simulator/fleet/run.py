"""Running a fleet: workers (one or a few processes), each with its vehicles, until every batch is acknowledged."""

from __future__ import annotations

import math
import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Any

from simulator.fleet.plan import FleetLog, FleetOptions, VehiclePlan, available_logs, plan_fleet
from simulator.fleet.report import FleetReport, VehicleReport
from simulator.fleet.vehicle import SimVehicle, decode_log


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
