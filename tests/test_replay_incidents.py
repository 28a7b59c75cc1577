"""Offline replay keeps incident snapshots like the vehicle does, and the owner can list and export them."""

from __future__ import annotations

import json

import pytest

from simulator.scenario import build_scenario, write_scenario
from tests.e2e_support import agent_config, run_agent

pytestmark = pytest.mark.incident

INCIDENTS = """incidents:
  pre_s: 20
  post_s: 5
  triggers:
    - name: hard_decel
      when: "Vehicle.Acceleration.Longitudinal <= -7"
"""


def test_replayed_hard_brake_leaves_one_snapshot_the_owner_can_export(tmp_path):
    truth = write_scenario(build_scenario("hard-brake", seed=3), tmp_path / "drive.log", tmp_path / "camera")
    config = agent_config(tmp_path, None, extra=INCIDENTS)
    result = run_agent("replay", str(tmp_path / "drive.log"), "--config", str(config), "--bus-map",
                       "can0=truck,can1=gps", "--buffer", str(tmp_path / "state" / "buffer.sqlite"), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["incidents"]["snapshots"] == 1
    # No incident consent: the snapshot stays in the car (no upload batch).
    assert summary["incidents"]["snapshot_batches"] == 0
    listed = run_agent("incidents", "--config", str(config), "--json")
    assert listed.returncode == 0, listed.stderr
    snapshots = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
    assert len(snapshots) == 1
    snapshot = snapshots[0]
    assert snapshot["start"] == pytest.approx(truth["brake_at"] - 20, abs=0.05)
    exported = run_agent("export", "--incident", snapshot["id"], "--out", str(tmp_path / "export"),
                         "--config", str(config))
    assert exported.returncode == 0, exported.stderr
    identity = run_agent("identity", "--config", str(config), "--json")
    assert identity.returncode == 0, identity.stderr
    fingerprint = json.loads(identity.stdout)["signing_key"]
    verified = run_agent("export", "verify", str(tmp_path / "export"), "--fingerprint", fingerprint)
    assert verified.returncode == 0 and "OK" in verified.stdout
    # Without the fingerprint the owner got out of band, a valid signature proves nothing: not trusted.
    untrusted = run_agent("export", "verify", str(tmp_path / "export"), "--trust-file", str(tmp_path / "none"))
    assert untrusted.returncode == 3 and "NOT TRUSTED" in untrusted.stdout + untrusted.stderr
