"""`vehicle-agent dump` and `vehicle-agent list` on the shipped DBCs: names, ids, layout, catalog entries."""

from __future__ import annotations

import json
import shutil

import pytest

from agent.cli.main import main

GPS_DBC = "dbc/css-electronics/canmod-gps.dbc"
PCAN_DBC = "dbc/kona-ev/pcan.dbc"


def _json(capsys, *argv: str) -> dict:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_dump_json_gives_layout_and_catalog_entries(capsys):
    report = _json(capsys, "dump", GPS_DBC, "--json")
    assert report["catalog"].endswith("canmod-gps.catalog.yaml")
    messages = {m["name"]: m for m in report["messages"]}
    assert len(messages) == 9
    speed = messages["gnss_speed"]
    assert (speed["id"], speed["id_hex"], speed["length"], speed["extended"]) == (7, "0x7", 5, False)
    signal = {s["name"]: s for s in speed["signals"]}["Speed"]
    assert (signal["category"], signal["vss"], signal["unit"]) == ("driving", "Vehicle.GNSSSpeed", "m/s")
    position = {s["name"]: s for s in messages["gnss_pos"]["signals"]}
    assert position["Latitude"] == {**position["Latitude"], "start": 1, "length": 28, "byte_order": "little_endian",
                                    "scale": 1e-06, "offset": -90, "minimum": -90, "maximum": 90,
                                    "category": "location", "vss": "Vehicle.CurrentLocation.Latitude"}
    assert position["PositionValid"]["choices"] == {"0": "Invalid", "1": "Valid"}


def test_dump_text_shows_message_header_signal_rows_and_choices(capsys):
    assert main(["dump", PCAN_DBC]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{PCAN_DBC}: 107 messages, 445 signals (213 classified by catalog "
                          "dbc/kona-ev/pcan.catalog.yaml)")
    assert "VCU_200  id 0x200, 8 bytes, senders VCU" in out
    gear = next(line for line in out.splitlines() if line.split()[:1] == ["CURRENT_GEAR"])
    assert gear.split()[:5] == ["CURRENT_GEAR", "11", "3", "little", "unsigned"]
    assert "choices: 0=P, 5=D, 6=N, 7=R" in out
    range_row = next(line for line in out.splitlines() if line.split()[:1] == ["Range"])
    assert "km" in range_row.split() and "Vehicle.Private.VCU200.Range" in range_row


def test_dump_without_catalog_marks_signals_unclassified(tmp_path, capsys):
    dbc = tmp_path / "gps.dbc"
    shutil.copy(GPS_DBC, dbc)  # no catalog beside the copy
    report = _json(capsys, "dump", str(dbc), "--json")
    signals = [s for m in report["messages"] for s in m["signals"]]
    assert len(signals) == 39
    assert {s["category"] for s in signals} == {"unclassified"} and {s["vss"] for s in signals} == {""}
    with_catalog = _json(capsys, "dump", str(dbc), "--json", "--catalog",
                         "dbc/css-electronics/canmod-gps.catalog.yaml")
    assert {s["category"] for m in with_catalog["messages"] for s in m["signals"]} >= {"location", "driving"}


def test_list_prints_message_names_and_signals_with_categories(capsys):
    assert main(["list", GPS_DBC]) == 0
    names = capsys.readouterr().out.split()
    assert names == sorted(names) and len(names) == 9 and "gnss_speed" in names
    assert main(["list", GPS_DBC, "--signals"]) == 0
    lines = capsys.readouterr().out.splitlines()
    index = lines.index("gnss_speed")
    assert lines[index + 1:index + 4] == ["  SpeedValid  driving  Vehicle.GNSSSpeedValid",
                                          "  Speed [m/s]  driving  Vehicle.GNSSSpeed",
                                          "  SpeedAccuracy [m/s]  driving  Vehicle.GNSSSpeedAccuracy"]
    report = _json(capsys, "list", PCAN_DBC, "--signals", "--json")
    vcu = {m["name"]: m for m in report["messages"]}["VCU_200"]
    assert vcu["id"] == 512
    assert {"name": "Range", "unit": "km", "category": "unclassified", "vss": "Vehicle.Private.VCU200.Range"} \
        in vcu["signals"]


@pytest.mark.parametrize("command", ["dump", "list"])
def test_missing_and_broken_dbc_name_the_file(command, tmp_path, capsys):
    assert main([command, str(tmp_path / "nope.dbc")]) == 2
    assert f"{tmp_path / 'nope.dbc'}: cannot read DBC" in capsys.readouterr().err
    broken = tmp_path / "broken.dbc"
    broken.write_text('VERSION ""\n\nBO_ 100 Msg: 8 Node\n SG_ Sig : 0|8@1+ (1,0) [0|255 "" Node\n')
    assert main([command, str(broken)]) == 2
    err = capsys.readouterr().err
    assert f"vehicle-agent {command}: error: {broken}" in err and "cannot load DBC" in err


def test_broken_catalog_names_the_file_and_field(tmp_path, capsys):
    catalog = tmp_path / "bad.catalog.yaml"
    catalog.write_text("signals:\n  gnss_speed.Speed:\n    category: secret\n")
    assert main(["dump", GPS_DBC, "--catalog", str(catalog)]) == 2
    err = capsys.readouterr().err
    assert str(catalog) in err and "unknown category 'secret'" in err
