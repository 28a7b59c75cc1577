"""dbc/obd2/obd2_j1979.dbc: every PID decodes as its SAE J1979 formula says, on every response id; the
generator reproduces the shipped files; the catalog maps to Vehicle.OBD paths; the agent's transport
decoder decodes a reassembled answer with it."""

from __future__ import annotations

import importlib.util
import sys

import can
import cantools
import pytest

from agent.catalog import load_catalog
from agent.dbc import load_dbc
from agent.decode import Decoder
from agent.diag.request_spec import MODE01_DATA_BYTES, split_mode01_response
from agent.transport_decode import wrap_for_transport

pytestmark = pytest.mark.diag

DBC = "dbc/obd2/obd2_j1979.dbc"
CATALOG = "dbc/obd2/obd2_j1979.catalog.yaml"

# (PID, data bytes A B ..., {signal: value by the J1979 formula written out here})
VECTORS = [
    (0x01, [0x83, 0x07, 0xE5, 0x00], {"MilOn": 1, "DtcCount": 3}),
    (0x01, [0x05, 0x00, 0x00, 0x00], {"MilOn": 0, "DtcCount": 5}),
    (0x04, [0x80], {"EngineLoad": 0x80 * 100 / 255}),
    (0x04, [0xFF], {"EngineLoad": 100.0}),
    (0x05, [0x00], {"CoolantTemperature": 0 - 40}),
    (0x05, [0x7B], {"CoolantTemperature": 0x7B - 40}),  # 83 degC
    (0x0B, [0x65], {"IntakeManifoldPressure": 0x65}),
    (0x0C, [0x1A, 0xF8], {"EngineSpeed": (256 * 0x1A + 0xF8) / 4}),  # 1726 rpm
    (0x0C, [0xFF, 0xFF], {"EngineSpeed": 16383.75}),
    (0x0D, [0x3C], {"VehicleSpeed": 60}),
    (0x0E, [0x89], {"TimingAdvance": 0x89 / 2 - 64}),  # +4.5 deg, VSS's own example
    (0x0F, [0x46], {"IntakeAirTemperature": 0x46 - 40}),
    (0x10, [0x01, 0x2C], {"MafAirFlowRate": (256 * 0x01 + 0x2C) / 100}),
    (0x11, [0x33], {"ThrottlePosition": 0x33 * 100 / 255}),  # 20 %
    (0x1F, [0x0E, 0x10], {"RunTimeSinceStart": 256 * 0x0E + 0x10}),  # 3600 s
    (0x21, [0x00, 0x2A], {"DistanceWithMilOn": 42}),
    (0x2F, [0xBF], {"FuelLevel": 0xBF * 100 / 255}),
    (0x31, [0x12, 0x34], {"DistanceSinceCodesCleared": 0x1234}),
    (0x33, [0x64], {"BarometricPressure": 100}),
    (0x42, [0x36, 0xB0], {"ControlModuleVoltage": (256 * 0x36 + 0xB0) / 1000}),  # 14.0 V
    (0x46, [0x3C], {"AmbientAirTemperature": 0x3C - 40}),
    (0x5B, [0xCC], {"HybridBatteryRemaining": 0xCC * 100 / 255}),  # 80 %
    (0x5C, [0x82], {"EngineOilTemperature": 0x82 - 40}),
    (0x5E, [0x00, 0x64], {"EngineFuelRate": (256 * 0x00 + 0x64) / 20}),  # 5 L/h
    (0x00, [0xBE, 0x1F, 0xA8, 0x13], {"PidsSupported_01_20": 0xBE1FA813}),
]


@pytest.fixture(scope="module")
def db(repo_root):
    return cantools.database.load_file(repo_root / DBC)


def frame(pid: int, data: list[int]) -> bytes:
    payload = bytes([0x41, pid, *data])
    return (bytes([len(payload)]) + payload).ljust(8, b"\x00")


@pytest.mark.parametrize(("pid", "data", "expected"), VECTORS, ids=[f"pid{v[0]:02X}-{bytes(v[1]).hex()}"
                                                                    for v in VECTORS])
def test_each_pid_decodes_by_its_formula(db, pid, data, expected):
    decoded = db.decode_message(0x7E8, frame(pid, data), decode_choices=False)
    assert decoded["Service"] == 0x41 and decoded["PID"] == pid and decoded["Length"] == 2 + len(data)
    assert {k: v for k, v in decoded.items() if k not in ("Length", "Service", "PID")} == pytest.approx(expected)
    assert len(data) == MODE01_DATA_BYTES[pid]  # the split table agrees with the DBC's byte counts


def test_the_briefs_example_and_choices(db):
    assert db.decode_message(0x7E8, bytes([0x04, 0x41, 0x0D, 0x3C, 0, 0, 0, 0])) == {
        "Length": 4, "Service": "Mode01CurrentData", "PID": 13, "VehicleSpeed": 60}
    assert db.decode_message(0x7E8, bytes([0x06, 0x41, 0x01, 0x83, 0, 0, 0, 0]))["MilOn"] == "On"


def test_every_response_id_has_the_same_message(db):
    names = [db.get_message_by_frame_id(i).name for i in range(0x7E8, 0x7F0)]
    assert names == [f"OBD2_ECU_{i:X}" for i in range(0x7E8, 0x7F0)]
    for frame_id in range(0x7E8, 0x7F0):
        assert db.decode_message(frame_id, frame(0x0C, [0x0F, 0xA0]))["EngineSpeed"] == 1000.0


def test_dtc_count_and_negative_response_fields(db):
    assert db.decode_message(0x7E9, bytes([0x06, 0x43, 0x02, 0x03, 0x01, 0x04, 0x20, 0]), decode_choices=False) == {
        "Length": 6, "Service": 0x43, "StoredDtcCount": 2}
    assert db.decode_message(0x7E8, bytes([0x03, 0x7F, 0x01, 0x12, 0, 0, 0, 0]), decode_choices=False) == {
        "Length": 3, "Service": 0x7F, "RejectedService": 0x01, "NegativeResponseCode": 0x12}


def test_extended_multiplexing_tree(db):
    message = db.get_message_by_frame_id(0x7E8)
    assert message.length == 8 and not message.is_extended_frame
    (length, service) = message.signal_tree
    assert length == "Length"
    pid_branch = service["Service"][0x41][0]["PID"]
    assert {0x01, 0x04, 0x05, 0x0B, 0x0C, 0x0D, 0x0F, 0x10, 0x11, 0x1F, 0x2F, 0x33, 0x42, 0x46, 0x5B,
            0x5C} <= set(pid_branch)
    # cantools encodes through the same tree (what a test ECU could use)
    assert message.encode({"Length": 3, "Service": 0x41, "PID": 0x0D, "VehicleSpeed": 88}) == frame(0x0D, [88])


def test_the_generator_reproduces_the_files(repo_root, monkeypatch):
    spec = importlib.util.spec_from_file_location("make_obd2_dbc", repo_root / "dbc/obd2/make_obd2_dbc.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "make_obd2_dbc", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    assert module.dbc_text() == (repo_root / DBC).read_text(encoding="ascii")
    assert module.catalog_text() == (repo_root / CATALOG).read_text(encoding="utf-8")


def test_the_catalog_maps_every_value_to_vehicle_obd(repo_root, db):
    catalog = load_catalog(repo_root / CATALOG)
    message = db.get_message_by_frame_id(0x7E8)
    entry = catalog.lookup("OBD2_ECU_7E8.VehicleSpeed")
    assert (entry.vss, entry.unit, entry.category) == ("Vehicle.OBD.Speed", "km/h", "driving")
    assert catalog.lookup("OBD2_ECU_7EF.EngineSpeed").vss == "Vehicle.OBD.EngineSpeed"
    assert catalog.lookup("OBD2_ECU_7E8.CoolantTemperature").vss == "Vehicle.OBD.CoolantTemperature"
    assert catalog.lookup("OBD2_ECU_7E8.DtcCount").vss == "Vehicle.OBD.Status.DTCCount"
    protocol = {"Length", "Service", "PID", "StoredDtcCount", "PendingDtcCount", "PermanentDtcCount",
                "RejectedService", "NegativeResponseCode"}
    for signal in message.signals:
        key = f"OBD2_ECU_7E8.{signal.name}"
        if signal.name in protocol:
            entry = catalog.lookup(key)
            assert (entry.vss, entry.category) == ("", "unclassified"), key  # never uploaded
            continue
        entry = catalog.lookup(key)
        assert entry is not None and entry.category in {"driving", "vehicle_health"}, key
        assert entry.unit == (signal.unit or ""), key
        assert entry.vss.startswith("Vehicle.OBD.") or (entry.vss == "" and "PidsSupported" in key), key


def test_the_agents_loader_takes_it_and_the_transport_decoder_decodes_an_answer(repo_root):
    loaded = load_dbc(repo_root / DBC)
    catalog = load_catalog(repo_root / CATALOG)
    decoder = wrap_for_transport(Decoder({"obd": [loaded]}, catalog), {"obd": [loaded]},
                                 ids=range(0x7E8, 0x7F0), request_ids={0x7E0 + n: 0x7E8 + n for n in range(8)})
    # A three-PID answer in two frames (first frame, consecutive frame), as an ECU sends it.
    frames = [bytes([0x10, 0x08, 0x41, 0x0C, 0x1A, 0xF8, 0x0D, 0x3C]), bytes([0x21, 0x05, 0x7B] + [0xCC] * 5)]
    out = [decoder.decode(can.Message(timestamp=1.0 + i, arbitration_id=0x7E8, data=d, is_extended_id=False), "obd")
           for i, d in enumerate(frames)]
    assert out[0] is None and out[1] is not None
    physical = decoder.physical(out[1])
    assert out[1].message == "OBD2_ECU_7E8" and physical["EngineSpeed"] == 1726.0
    # A DBC message holds one PID: the decoder splits the answer and decodes each part.
    assert physical["VehicleSpeed"] == 60 and physical["CoolantTemperature"] == 83
    assert decoder.specs["OBD2_ECU_7E8.EngineSpeed"].vss_path == "Vehicle.OBD.EngineSpeed"
    parts = split_mode01_response(bytes([0x41, 0x0C, 0x1A, 0xF8, 0x0D, 0x3C, 0x05, 0x7B]))
    assert parts == [bytes([0x41, 0x0C, 0x1A, 0xF8]), bytes([0x41, 0x0D, 0x3C]), bytes([0x41, 0x05, 0x7B])]
    db = loaded.database
    values = [db.decode_message(0x7E8, bytes([len(p)]) + p, allow_truncated=True) for p in parts]
    assert [v.get("EngineSpeed", v.get("VehicleSpeed", v.get("CoolantTemperature"))) for v in values] == [
        1726.0, 60, 83]


def test_split_stops_where_a_pid_cannot_be_delimited():
    assert split_mode01_response(bytes([0x41, 0x0D, 0x3C, 0x99, 0x01, 0x0C, 0x1A])) == [bytes([0x41, 0x0D, 0x3C])]
    assert split_mode01_response(bytes([0x41, 0x0C, 0x1A])) == []  # PID 0C needs 2 bytes
    assert split_mode01_response(bytes([0x43, 0x01, 0x03, 0x01])) == []
