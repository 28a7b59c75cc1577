"""The fleet simulator (issue 14): N vehicles, each the agent's own data path and uplink, one broker.

What the reference receiver holds must be exactly what each vehicle committed: per pseudonymous
vehicle id the same batches and samples, no gaps, conflicts or corrupt batches, and no samples of a
category that vehicle's owner did not grant.
"""

from __future__ import annotations

import json
import math
import re

import pytest

from simulator.cli import main as vehicle_sim
from simulator.fleet import FleetOptions, available_logs, run_fleet, signal_categories
from simulator.receiver.client import Receiver

pytestmark = pytest.mark.fleet

VIN = re.compile(r"[A-HJ-NPR-Z0-9]{17}")
# With seed 2 the three truck vehicles of five differ in consent: one has location, one driving only, one neither.
SEED = 2


def fleet(mosquitto, shared_data, **overrides) -> FleetOptions:
    values = {"vehicles": 5, "duration": 20.0, "broker_host": mosquitto.host, "broker_port": mosquitto.port,
              "seed": SEED, "data_dir": shared_data, "batch_age_s": 5.0, "ack_timeout": 30.0}
    values.update(overrides)
    return FleetOptions(**values)


def start_receiver(tmp_path, mosquitto, shared_data) -> Receiver:
    receiver = Receiver(mosquitto.host, mosquitto.port, tmp_path / "receiver.sqlite",
                        categories_of=signal_categories(available_logs(shared_data)))
    receiver.start()
    return receiver


def received(receiver: Receiver, report) -> dict:
    assert receiver.wait_for(report.batches_committed, timeout=30), receiver.report()
    receiver.wait_quiet(0.3, timeout=5)
    query = receiver.store.query
    return {
        "report": receiver.report(),
        "batches": {v: (n, s) for v, n, s in query("SELECT vehicle, COUNT(*), SUM(samples) FROM batches "
                                                   "GROUP BY vehicle")},
        "samples": dict(query("SELECT vehicle, COUNT(*) FROM samples GROUP BY vehicle")),
        "categories": {v: set(c.split(",")) for v, c in query("SELECT vehicle, GROUP_CONCAT(DISTINCT category) "
                                                               "FROM samples GROUP BY vehicle")},
        "first": dict(query("SELECT vehicle, MIN(timestamp) FROM samples GROUP BY vehicle")),
    }


@pytest.mark.parametrize("processes", [1, 2])
def test_receiver_holds_exactly_what_each_vehicle_committed(tmp_path, shared_data, mosquitto, processes):
    receiver = start_receiver(tmp_path, mosquitto, shared_data)
    try:
        report = run_fleet(fleet(mosquitto, shared_data, processes=processes))
        got = received(receiver, report)
    finally:
        receiver.stop()
    assert report.ok and report.processes == processes
    assert report.batches_acked == report.batches_committed > 0 and report.batches_rejected == 0
    assert sorted(report.logs) == ["kona", "truck"]
    summary = got["report"]
    assert (summary["batches"], summary["gaps"], summary["conflicts"], summary["corrupt"]) == \
        (report.batches_committed, 0, 0, 0)
    vehicles = {v.vehicle_id: v for v in report.per_vehicle}
    # Five distinct pseudonymous ids (as the agent derives them from a VIN), none of them a VIN.
    assert len(vehicles) == 5 and set(got["batches"]) == set(vehicles)
    for vehicle_id in vehicles:
        assert re.fullmatch(r"v[0-9a-f]{32}", vehicle_id) and not VIN.fullmatch(vehicle_id.upper())
    # Per vehicle: the batches and samples it committed, every sample decoded at the receiver.
    assert got["batches"] == {v.vehicle_id: (v.batches_committed, v.samples) for v in vehicles.values()}
    assert got["samples"] == {v.vehicle_id: v.samples for v in vehicles.values()}
    # Consent per vehicle: nothing of a category not granted reaches the receiver.
    for vehicle in vehicles.values():
        assert got["categories"][vehicle.vehicle_id] <= set(vehicle.granted), vehicle
        assert got["categories"][vehicle.vehicle_id] == set(vehicle.categories_sent)
    trucks = [v for v in vehicles.values() if v.log == "truck"]
    assert any("location" in v.granted for v in trucks) and any("location" not in v.granted for v in trucks)
    assert all(("location" in got["categories"][v.vehicle_id]) == ("location" in v.granted) for v in trucks)
    assert all(("driving" in got["categories"][v.vehicle_id]) == ("driving" in v.granted) for v in trucks)
    # Same log, other starting point: other first timestamps (and so no two vehicles send the same batches).
    for log in ("truck", "kona"):
        same = [v for v in vehicles.values() if v.log == log]
        assert len(same) >= 2
        assert len({v.offset_s for v in same}) == len(same)
        firsts = [got["first"][v.vehicle_id] for v in same]
        assert len(set(firsts)) == len(firsts)
        assert firsts == pytest.approx([v.first_timestamp for v in same], abs=1e-3)


def test_real_time_pacing_spreads_each_vehicle_over_the_duration(tmp_path, shared_data, mosquitto):
    receiver = start_receiver(tmp_path, mosquitto, shared_data)
    try:
        report = run_fleet(fleet(mosquitto, shared_data, vehicles=2, duration=3.0, speed=1.0, batch_age_s=1.0))
        got = received(receiver, report)
    finally:
        receiver.stop()
    assert report.ok and report.speed == "1" and report.batches_committed >= 4
    assert report.elapsed_s >= 3.0
    assert got["report"]["batches"] == report.batches_committed and got["report"]["gaps"] == 0
    for vehicle in report.per_vehicle:
        span = receiver_span(tmp_path / "receiver.sqlite", vehicle.vehicle_id)
        assert 2.0 < span < 3.0 + 1e-6


def receiver_span(db, vehicle_id: str) -> float:
    import sqlite3

    with sqlite3.connect(db) as connection:
        low, high = connection.execute("SELECT MIN(timestamp), MAX(timestamp) FROM samples WHERE vehicle = ?",
                                       (vehicle_id,)).fetchone()
    return high - low


def test_cli_prints_a_json_report_and_exits_0_when_all_acknowledged(shared_data, mosquitto, capsys):
    code = vehicle_sim(["fleet", "--vehicles", "3", "--duration", "5s", "--broker", f"127.0.0.1:{mosquitto.port}",
                        "--data", str(shared_data), "--seed", "1", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads(out)
    assert report["vehicles"] == 3 and report["batches_unacked"] == 0
    assert report["batches_acked"] == report["batches_committed"] > 0
    assert len({v["vehicle_id"] for v in report["per_vehicle"]}) == 3
    assert math.isfinite(report["batches_per_s"]) and report["samples"] > 0


def test_cli_refuses_a_broker_off_loopback(capsys):
    with pytest.raises(SystemExit):
        vehicle_sim(["fleet", "--broker", "192.0.2.1:1883"])
    assert "loopback" in capsys.readouterr().err
