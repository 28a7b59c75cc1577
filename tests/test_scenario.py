"""``vehicle-sim scenario``: a drive with an incident and matching camera events, as a log and on a bus."""

from __future__ import annotations

import json
import math

import can
import cantools
import pytest

from agent.camera.events import parse_event
from simulator.cli import main as sim_main
from simulator.scenario import GPS_DBC, SCHEDULE, TRUCK_DBC, build_scenario, write_scenario

pytestmark = pytest.mark.incident


def expected_counts(duration: float) -> dict[str, int]:
    counts: dict[str, int] = {}
    for channel, period, phase in SCHEDULE.values():
        counts[channel] = counts.get(channel, 0) + math.ceil(round((duration - phase) / period, 6))
    return counts


def decode_log(path):
    truck = cantools.database.load_file(TRUCK_DBC)
    gps = cantools.database.load_file(GPS_DBC)
    series: dict[str, list[tuple[float, float]]] = {}
    for msg in can.LogReader(str(path)):
        db = truck if msg.channel == "can0" else gps
        message = db.get_message_by_frame_id(msg.arbitration_id)
        for name, value in message.decode(msg.data, decode_choices=False).items():
            series.setdefault(f"{message.name}.{name}", []).append((msg.timestamp, value))
    return series


def value_at(series, t):
    return [v for ts, v in series if ts <= t][-1]


def test_hard_brake_log_has_the_brake_the_impact_and_the_camera_events(tmp_path):
    truth = write_scenario(build_scenario("hard-brake", seed=7), tmp_path / "drive.log", tmp_path / "camera")
    assert truth["frames"] == expected_counts(60.0) == {"can0": 6000, "can1": 8040}
    series = decode_log(tmp_path / "drive.log")
    speed = series["CCVS1.WheelBasedVehicleSpeed"]
    brake, impact = truth["brake_at"], truth["impact_at"]
    assert value_at(speed, brake - 0.1) == pytest.approx(60.0, abs=1.5)
    assert value_at(speed, impact - 0.02) == pytest.approx(60.8 - 8.5 * 3.6 * 1.5, abs=2.0)  # ~15 km/h left
    assert value_at(speed, impact + 0.2) == 0.0
    # More than 8 km/h lost within 150 ms at the impact, never during the braking before it.
    drops = [(t, value_at(speed, t) - value_at(speed, t - 0.15)) for t, _ in speed if t > truth["start_time"] + 1]
    big = [t for t, drop in drops if drop <= -8]
    assert big and min(big) >= impact and max(big) <= impact + 0.3
    decel = [v for t, v in series["gnss_imu.AccelerationX"] if brake + 0.02 <= t < impact - 0.02]
    assert sum(decel) / len(decel) == pytest.approx(-8.5, abs=0.3)
    assert max(v for t, v in series["gnss_imu.AccelerationX"] if t < brake) > -3.0
    lon = series["gnss_pos.Longitude"]
    assert lon[-1][1] - lon[0][1] > 0.005  # it drove east (about 700 m)

    events = {p.name: parse_event(p.read_bytes(), p.name) for p in sorted((tmp_path / "camera").iterdir())}
    kinds = sorted((e.camera, e.trigger, e.time) for e in events.values())
    assert kinds == sorted([("front", "hard_brake", brake), ("front", "collision", impact),
                            ("cabin", "collision", impact), ("rear", "sentry", truth["start_time"] + 55.0)])
    front_brake = next(e for e in events.values() if e.trigger == "hard_brake")
    assert front_brake.plates == 2 and not front_brake.anonymised
    assert not [p for p in (tmp_path / "camera").iterdir() if p.name.endswith(".tmp")]
    saved = json.loads((tmp_path / "drive.scenario.json").read_text())
    assert saved["impact_at"] == impact and saved["channels"] == {"can0": "truck", "can1": "gps"}


def test_sentry_is_parked_with_a_bump_and_a_rear_collision_event(tmp_path):
    truth = write_scenario(build_scenario("sentry", seed=1), tmp_path / "s.log", tmp_path / "cam")
    series = decode_log(tmp_path / "s.log")
    assert {v for _, v in series["CCVS1.WheelBasedVehicleSpeed"]} == {0.0}
    impact = truth["impact_at"]
    jolt = [v for t, v in series["gnss_imu.AccelerationX"] if impact <= t < impact + 0.05]
    quiet = [v for t, v in series["gnss_imu.AccelerationX"] if t < impact - 1]
    assert min(jolt) > 5.0 and max(abs(v) for v in quiet) < 1.0
    events = [parse_event(p.read_bytes(), p.name) for p in (tmp_path / "cam").iterdir()]
    assert sorted((e.camera, e.trigger) for e in events) == [("cabin", "sentry"), ("rear", "collision"),
                                                            ("rear", "sentry")]
    assert next(e for e in events if e.trigger == "collision").time == impact


def test_same_seed_same_bytes_other_seed_other_noise(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        write_scenario(build_scenario("hard-brake", seed=seed), tmp_path / f"{name}.log", tmp_path / f"{name}-cam")
    assert (tmp_path / "a.log").read_bytes() == (tmp_path / "b.log").read_bytes()
    assert (tmp_path / "a.log").read_bytes() != (tmp_path / "c.log").read_bytes()


def test_cli_writes_log_and_camera_records(tmp_path, capsys):
    assert sim_main(["scenario", "hard-brake", "-o", str(tmp_path / "out" / "drive.log"), "--seed", "2"]) == 0
    assert (tmp_path / "out" / "drive.log").stat().st_size > 100_000
    assert len(list((tmp_path / "out" / "drive-camera").glob("*.json"))) == 4
    assert "impact at 1700000041.5" in capsys.readouterr().out
    assert sim_main(["scenario", "hard-brake"]) == 2  # neither -o nor --to
    assert "give -o LOG" in capsys.readouterr().err


def test_cli_sends_onto_a_bus_and_drops_camera_records_into_the_spool(tmp_path, capsys):
    receiver = can.Bus(interface="virtual", channel="scenario-test", receive_own_messages=False)
    try:
        code = sim_main(["scenario", "sentry", "--to", "virtual://scenario-test", "--speed", "max",
                         "--spool", str(tmp_path / "spool")])
        assert code == 0
        received = 0
        while receiver.recv(timeout=0.05) is not None:
            received += 1
    finally:
        receiver.shutdown()
    assert received == sum(expected_counts(60.0).values())
    assert f"sent {received} frames" in capsys.readouterr().out
    spooled = sorted(p.name for p in (tmp_path / "spool").iterdir())
    assert len(spooled) == 3 and all(name.endswith(".json") for name in spooled)
    # Live: the drive happens now, so camera times are today's, not the log epoch.
    times = [parse_event(p.read_bytes(), p.name).time for p in (tmp_path / "spool").iterdir()]
    assert all(t > 1_700_000_100 for t in times)
