"""The owner's signed export: contents, Ed25519 signature, verification naming the changed file, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from xml.etree import ElementTree

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.cli.main import main as agent_main
from agent.export.signing import KEY_FILE, SigningKeyError, display_fingerprint, load_or_create_key, public_pem
from agent.export.verify import verify_export
from agent.export.writer import ExportError, export_incident, export_range
from agent.incident.snapshot import IncidentRecorder
from agent.incident.store import IncidentStore
from agent.ledger import Ledger
from agent.sources.log import LogSource
from simulator.scenario import GPS_DBC, TRUCK_DBC, build_scenario, write_scenario
from tests.test_incident import BUS_MAP, feed, incident_config, make_decoder

pytestmark = pytest.mark.incident

SHORT_WINDOW = """\
incidents:
  pre_s: 4
  post_s: 2
  triggers:
    - name: hard_decel
      when: "gnss_imu.AccelerationX <= -7"
"""
EXPECTED_FILES = {
    "samples/driving.csv", "samples/driving.jsonl", "samples/location.csv", "samples/location.jsonl",
    "samples/vehicle_health.csv", "samples/vehicle_health.jsonl", "track.gpx", "frames.log",
    f"dbc/{TRUCK_DBC.name}", f"dbc/{GPS_DBC.name}", "dbc/SHA256SUMS", "consent-history.jsonl", "ledger.jsonl",
    "completeness.json", "vehicle-public-key.pem",
}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A hard-brake drive, its incident snapshot in a state directory, and a fresh export of it."""
    root = tmp_path_factory.mktemp("export")
    truth = write_scenario(build_scenario("hard-brake", seed=5), root / "drive.log", root / "camera")
    state = root / "state"
    store = IncidentStore(state / "incidents")
    decoder = make_decoder()
    feed(IncidentRecorder(incident_config(SHORT_WINDOW), decoder.specs, store.save), decoder,
         LogSource(root / "drive.log", bus_map=BUS_MAP))
    (snapshot,) = store.list()
    key = load_or_create_key(state)
    consent = [{"version": 1, "kind": "grant", "category": "incident"}]
    ledger = [{"seq": 1, "kind": "upload", "fields": {"batch": 3}}]
    export_incident(store, snapshot.id, root / "export", key, [TRUCK_DBC, GPS_DBC], consent, ledger, "truck-1")
    return {"root": root, "truth": truth, "state": state, "store": store, "id": snapshot.id,
            "export": root / "export", "key": key}


def copy_of(recorded, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(recorded["export"], target)
    return target


def flip_byte(path, offset=None):
    data = bytearray(path.read_bytes())
    index = len(data) // 2 if offset is None else offset
    data[index] ^= 0x01
    path.write_bytes(bytes(data))


def test_fresh_export_has_every_file_and_verifies(recorded):
    export = recorded["export"]
    manifest = json.loads((export / "manifest.json").read_text())
    assert {entry["path"] for entry in manifest["files"]} == EXPECTED_FILES
    present = {str(p.relative_to(export)) for p in export.rglob("*") if p.is_file()}
    assert present == EXPECTED_FILES | {"manifest.json", "manifest.json.sig"}
    assert manifest["kind"] == "incident" and manifest["vehicle"] == "truck-1"
    assert manifest["details"]["incident"] == recorded["id"]
    assert manifest["window"]["end"] - manifest["window"]["start"] == pytest.approx(6.0)
    result = verify_export(export)
    assert result.ok, result.summary()
    assert result.checked == len(EXPECTED_FILES)
    assert result.summary().startswith("OK:")
    sums = (export / "dbc" / "SHA256SUMS").read_text().splitlines()
    assert sums == [f"{_sha(TRUCK_DBC)}  {TRUCK_DBC.name}",
                    f"{_sha(GPS_DBC)}  {GPS_DBC.name}"]
    assert json.loads((export / "consent-history.jsonl").read_text()) == {"version": 1, "kind": "grant",
                                                                         "category": "incident"}
    assert (export / "vehicle-public-key.pem").read_bytes() == public_pem(recorded["key"])


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ["samples/driving.csv", "samples/location.jsonl", "frames.log",
                                  f"dbc/{GPS_DBC.name}", "track.gpx", "ledger.jsonl", "completeness.json"])
def test_one_flipped_byte_fails_verification_naming_the_file(recorded, tmp_path, name):
    export = copy_of(recorded, tmp_path)
    assert verify_export(export).ok
    flip_byte(export / name)
    result = verify_export(export)
    assert not result.ok
    assert result.signature_ok  # the manifest itself is intact
    assert result.changed == [name]
    assert f"{name}: content changed" in result.summary()


def test_changed_manifest_or_signature_fails_the_signature(recorded, tmp_path):
    export = copy_of(recorded, tmp_path)
    text = (export / "manifest.json").read_text()
    (export / "manifest.json").write_text(text.replace('"truck-1"', '"truck-2"'))
    result = verify_export(export)
    assert not result.ok and not result.signature_ok
    assert result.changed == ["manifest.json"]
    export = copy_of(recorded, tmp_path / "second")
    signature = (export / "manifest.json.sig").read_text()
    (export / "manifest.json.sig").write_text(("B" if signature[0] != "B" else "C") + signature[1:])
    assert verify_export(export).changed == ["manifest.json"]


def test_missing_and_added_files_are_named(recorded, tmp_path):
    export = copy_of(recorded, tmp_path)
    (export / "track.gpx").unlink()
    (export / "samples" / "extra.csv").write_text("x\n")
    result = verify_export(export)
    assert result.changed == ["track.gpx", "samples/extra.csv"]
    assert "track.gpx: missing" in result.summary()
    assert "samples/extra.csv: not listed in the manifest" in result.summary()


def test_an_export_re_signed_with_another_key_fails_against_the_vehicle_key(recorded, tmp_path):
    other = Ed25519PrivateKey.generate()
    forged = tmp_path / "forged"
    export_incident(recorded["store"], recorded["id"], forged, other, [TRUCK_DBC, GPS_DBC])
    assert verify_export(forged).ok  # consistent in itself
    result = verify_export(forged, trusted_key=recorded["key"].public_key())
    assert not result.ok and result.changed == ["vehicle-public-key.pem"]
    assert verify_export(recorded["export"], trusted_key=recorded["key"].public_key()).ok


def test_signing_key_is_private_created_once_and_reused(tmp_path):
    key = load_or_create_key(tmp_path / "state")
    path = tmp_path / "state" / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create_key(tmp_path / "state")
    assert public_pem(again) == public_pem(key)
    os.chmod(path, 0o644)
    with pytest.raises(SigningKeyError, match="readable by others"):
        load_or_create_key(tmp_path / "state")


def test_gpx_track_follows_the_position_samples(recorded):
    export = recorded["export"]
    ns = {"g": "http://www.topografix.com/GPX/1/1"}
    points = ElementTree.parse(export / "track.gpx").getroot().findall(".//g:trkpt", ns)
    latitudes = [json.loads(line) for line in (export / "samples" / "location.jsonl").read_text().splitlines()]
    lat = [s for s in latitudes if s["signal"] == "gnss_pos.Latitude"]
    lon = [s for s in latitudes if s["signal"] == "gnss_pos.Longitude"]
    assert len(points) == len(lat) == len(lon) == 60  # 6 s of gnss_pos at 10 Hz
    assert float(points[0].get("lat")) == pytest.approx(lat[0]["value"], abs=1e-7)
    assert float(points[-1].get("lon")) == pytest.approx(lon[-1]["value"], abs=1e-7)
    assert float(points[-1].get("lon")) > float(points[0].get("lon"))  # driving east
    assert points[0].find("g:time", ns).text.endswith("Z")


def test_range_export_takes_exactly_the_frames_of_the_range(recorded, tmp_path):
    start = recorded["truth"]["start_time"] + 10.0
    end = start + 2.5
    frames = list(LogSource(recorded["root"] / "drive.log", bus_map=BUS_MAP))
    result = export_range(frames, make_decoder(), start, end, tmp_path / "range", recorded["key"],
                          [TRUCK_DBC, GPS_DBC], vehicle_id="truck-1")
    inside = [m for _, m in frames if start <= m.timestamp <= end]
    # SCHEDULE over [10.000, 12.500]: IMU 251 and CCVS1 126 (both edges on their grids), EEC1 125,
    # three 100 ms messages 25 each, four 1 s messages 3 each.
    assert result.frames == len(inside) == 251 + 126 + 125 + 3 * 25 + 4 * 3
    assert verify_export(tmp_path / "range").ok
    manifest = json.loads((tmp_path / "range" / "manifest.json").read_text())
    assert manifest["kind"] == "range" and manifest["window"]["start"] == start
    with pytest.raises(ExportError, match="not empty"):
        export_range(frames, make_decoder(), start, end, tmp_path / "range", recorded["key"], [TRUCK_DBC])
    with pytest.raises(ExportError, match="before --from"):
        export_range(frames, make_decoder(), end, start, tmp_path / "other", recorded["key"], [TRUCK_DBC])


def test_cli_lists_exports_and_verifies(recorded, tmp_path, capsys):
    config = tmp_path / "agent.yaml"
    config.write_text(f"""\
vehicle: {{id: truck-cli}}
buses:
  - {{name: truck, dbc: [{TRUCK_DBC}], j1939: true, log_channel: can0}}
  - {{name: gps, dbc: [{GPS_DBC}], log_channel: can1}}
state: {{dir: {recorded['state']}}}
""")
    assert agent_main(["incidents", "--config", str(config)]) == 0
    listing = capsys.readouterr().out
    assert recorded["id"] in listing and "hard_decel" in listing and "complete" in listing
    assert agent_main(["incidents", "--state", str(recorded["state"]), "--json"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["id"] == recorded["id"] and row["complete"] is True and row["raw_frames"] > 1000

    out = tmp_path / "owner"
    assert agent_main(["export", "--config", str(config), "--incident", recorded["id"], "--out", str(out)]) == 0
    assert "exported" in capsys.readouterr().out
    trusted = ["--fingerprint", display_fingerprint(recorded["key"])]  # as `vehicle-agent identity` shows it
    assert agent_main(["export", "verify", str(out), *trusted]) == 0
    assert capsys.readouterr().out.startswith("OK:")
    entries = Ledger.in_dir(recorded["state"]).entries()
    assert entries[-1].kind == "export" and entries[-1].fields["export"] == recorded["id"]

    flip_byte(out / "samples" / "vehicle_health.csv")
    assert agent_main(["export", "verify", str(out)]) == 1
    err = capsys.readouterr().err
    assert "samples/vehicle_health.csv: content changed" in err

    assert agent_main(["export", "--config", str(config), "--incident", recorded["id"], "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert agent_main(["export", "--config", str(config), "--incident", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "no incident snapshot 'nope'" in capsys.readouterr().err

    ranged = tmp_path / "ranged"
    start = recorded["truth"]["brake_at"] - 1
    assert agent_main(["export", "--config", str(config), "--from", str(start), "--to", str(start + 2),
                       "--out", str(ranged)]) == 0  # frames from the snapshot that covers the range
    manifest = json.loads((ranged / "manifest.json").read_text())
    assert manifest["counts"]["frames"] > 0 and manifest["vehicle"] == "truck-cli"
    assert manifest["details"]["ledger_head"]["seq"] == entries[-1].seq  # pins the ledger as it was
    assert agent_main(["export", "verify", str(ranged), *trusted]) == 0
