"""`vehicle-agent demo --log`: simulator process -> agent -> Mosquitto -> receiver, with a JSON report."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest

from tests.e2e_support import GPS_DBC, J1939_DBC, run_agent

pytestmark = pytest.mark.uplink


def test_demo_on_a_shared_log_reports_that_what_was_sent_arrived(tmp_path, shared_data):
    report_path = tmp_path / "report.json"
    result = run_agent("demo", "--log", str(shared_data / "logs/css_nissan_leaf_uds_and_canmod_gps.blf"),
                       "--dbc", str(GPS_DBC), str(J1939_DBC), "--grant-all", "--speed", "max",
                       "--report-json", str(report_path), "--workdir", str(tmp_path / "work"), timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    sent, received = report["sent"], report["received"]
    assert sent["frames"] == 5588 and sum(sent["dropped_at_bus"].values()) == 0
    assert sent["batches"] == received["batches"] > 0
    assert sent["samples"] == received["samples"] > 30000
    assert (received["duplicates_dropped"], received["gaps"], received["corrupt"]) == (0, 0, 0)
    # Bench mode: every category counts as granted; the GPS module's signals are location/driving/health.
    assert set(received["by_category"]) == {"driving", "location", "vehicle_health"}
    assert sum(received["by_category"].values()) == received["samples"]
    assert "OK: every uploaded batch arrived once, intact" in result.stdout


def test_default_demo_shows_what_arrived_under_each_consent_once_and_readably(tmp_path):
    """The bundled log, both consent phases and the incident: which signals arrived (with values), the car's
    decode table printed once, frames named as frames, people's times in ISO."""
    report_path = tmp_path / "report.json"
    result = run_agent("demo", "--speed", "max", "--report-json", str(report_path), "--workdir", str(tmp_path / "w"),
                       timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    phase1, rest = out.split("== 2. ", 1)
    phase2, incident = rest.split("== Incident", 1)
    # What the car decoded is the same log both times: shown once, then referred to.
    assert out.count("top signals, as decoded in the car") == 1
    assert "decoded the same frames and signals as phase 1 (same log)" in phase2
    assert "31580 frames with an unknown id" in phase1 and "unknown id 31580" not in out
    # Phase 1 (default consent): nothing arrived; phase 2 lists the signals with their arrived values.
    assert "signals that arrived: none" in phase1
    assert "location (2 signals, 230 samples)" in phase2
    latitude = re.search(r"gnss_pos\.Latitude\s+115\s+(-?\d+\.\d+) deg", phase2)
    assert latitude, phase2
    # City level: the centre of a 0.1 degree cell, (floor(v * 10) + 0.5) / 10.
    value = float(latitude.group(1))
    assert abs(value * 10 - 0.5 - round(value * 10 - 0.5)) < 1e-9
    assert "EEC1.EngineSpeed                   12719  646.5 .. 653.75 rpm" in phase2
    arrived2, held2 = phase2.split("signals that arrived", 1)[1].split("held back in the car", 1)
    assert "gnss_altitude.Altitude" not in arrived2 and "gnss_altitude.Altitude" in held2  # not granted
    assert re.search(r"CCVS1\.WheelBasedVehicleSpeed\s+1272  0 km/h", arrived2)  # the truck stands still
    # Every signal the receiver stored is named in its phase, and no signal it did not store.
    with sqlite3.connect(tmp_path / "w" / "run2" / "receiver.sqlite") as db:
        stored = {key for (key,) in db.execute("SELECT DISTINCT key FROM samples")}
    named = set(re.findall(r"\b(?:CCVS1|EEC1|gnss_\w+)\.\w+", arrived2))
    assert len(stored) == 27 and named == stored
    assert "location 14: gnss_altitude.Altitude" in held2 and "driving" not in held2
    # Phase 1: nothing arrived, so everything decoded is held back, per category.
    assert re.search(r"driving 20: .*location 16: .*vehicle_health 5: EEC1\.EngineSpeed", phase1, re.S)
    # Readable in a terminal: no line wider than 100 columns, no line of the incident part said twice.
    # Readable in a terminal: no line past 100 characters, but for the paths of the work directory, which are
    # as long as the directory given (CI's pytest-N numbering made one 101).
    assert max(len(line) for line in out.splitlines()[2:] if str(tmp_path) not in line) <= 100
    lines = [line.strip() for line in incident.splitlines() if line.strip()]
    assert len(lines) == len(set(lines)) and incident.count("content changed") == 1
    report = json.loads(report_path.read_text())
    assert report["runs"][0]["received"]["samples"] == 0 and report["received"]["by_category"]["location"] == 230
    # People's times are ISO (with their offset), not epoch floats.
    assert re.search(r"brake at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", incident)
    assert not re.search(r"\b1[67]\d{8}\.\d", incident)
    assert "WARNING" not in out
