"""`vehicle-agent demo --log`: simulator process -> agent -> Mosquitto -> receiver, with a JSON report."""

from __future__ import annotations

import json

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
