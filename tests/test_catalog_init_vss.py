"""`catalog init` proposes official VSS paths only where a real DBC signal clearly matches (name and unit),
and leaves every other signal for review with the reason, instead of inventing paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agent.catalog import load_catalog
from agent.cli.common import load_catalogs, load_dbcs
from agent.cli.main import main
from agent.decode import Decoder
from agent.privacy.decision import category_of
from agent.vss import checked_category, known_paths, propose

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "dbc"


def _draft(tmp_path, dbc: Path) -> tuple[dict, str]:
    out = tmp_path / (dbc.stem + ".catalog.yaml")
    assert main(["catalog", "init", str(dbc), "-o", str(out)]) == 0
    text = out.read_text()
    return yaml.safe_load(text)["signals"], text


def _paths(signals: dict) -> dict[str, str]:
    return {key: entry["vss"] for key, entry in signals.items() if entry["vss"]}


def test_truck_and_gps_dbcs_get_the_standard_paths(tmp_path):
    truck, _ = _draft(tmp_path, ROOT / "dbc/css-electronics/CSS-Electronics-SAE-J1939-DEMO.dbc")
    assert _paths(truck) == {"CCVS1.WheelBasedVehicleSpeed": "Vehicle.Speed",
                             "EEC1.EngineSpeed": "Vehicle.Powertrain.CombustionEngine.Speed"}
    gps, text = _draft(tmp_path, ROOT / "dbc/css-electronics/canmod-gps.dbc")
    assert _paths(gps) == {
        "gnss_pos.Latitude": "Vehicle.CurrentLocation.Latitude",
        "gnss_pos.Longitude": "Vehicle.CurrentLocation.Longitude",
        "gnss_altitude.Altitude": "Vehicle.CurrentLocation.Altitude",
        "gnss_attitude.Heading": "Vehicle.CurrentLocation.Heading",
        "gnss_odo.DistanceTotal": "Vehicle.TraveledDistance",
    }
    # Position stays in the location category (what the privacy rules key on).
    for key in ("gnss_pos.Latitude", "gnss_pos.Longitude", "gnss_altitude.Altitude", "gnss_attitude.Heading"):
        assert gps[key]["category"] == "location"
    # GNSS speed over ground in m/s is not Vehicle.Speed: left for review, not guessed.
    assert gps["gnss_speed.Speed"]["vss"] == ""
    assert "5 of 39 signals match a standard VSS 4.0 path" in text
    assert 'gnss_pos.PositionAccuracy:\n    vss: ""  # review: a qualifier of a measurement (word \'accuracy\')' in text


def test_kona_pcan_wheel_speeds_soc_and_the_doubtful_ones(tmp_path):
    signals, text = _draft(tmp_path, ROOT / "dbc/kona-ev/pcan.dbc")
    paths = _paths(signals)
    assert paths == {
        "BMS_542.SocDisp": "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed",
        "IEB_386_WHEEL.WHL_SPD_FL": "Vehicle.Chassis.Axle.Row1.Wheel.Left.Speed",
        "IEB_386_WHEEL.WHL_SPD_FR": "Vehicle.Chassis.Axle.Row1.Wheel.Right.Speed",
        "IEB_386_WHEEL.WHL_SPD_RL": "Vehicle.Chassis.Axle.Row2.Wheel.Left.Speed",
        "IEB_386_WHEEL.WHL_SPD_RR": "Vehicle.Chassis.Axle.Row2.Wheel.Right.Speed",
        "Odometer.Odometer": "Vehicle.TraveledDistance",
        "StabilityControl.LAT_ACCEL": "Vehicle.Acceleration.Lateral",
        "StabilityControl.LONG_ACCEL": "Vehicle.Acceleration.Longitudinal",
    }
    assert len(signals) == 445 and sum(1 for e in signals.values() if not e["vss"]) == 445 - 8
    assert all(entry["review"] is True for entry in signals.values())
    # The 12 V battery's SoC is not the traction battery's; a guess in the DBC ("SoC_Maybe") is no match;
    # a signal without a unit cannot be checked against VSS's.
    assert signals["TwelveVolt_Battery_INCORRECT.BAT_SOC"]["vss"] == ""
    assert signals["BatteryLimits.SoC_Maybe"]["vss"] == ""
    assert ("StabilityControl.YAW_RATE:\n    vss: \"\"  # review: the name suggests Vehicle.AngularVelocity.Yaw, "
            "but the unit is missing and VSS 4.0 wants degrees/s") in text
    # The draft loads as a catalog as it is.
    catalog = load_catalog(tmp_path / "pcan.catalog.yaml")
    assert catalog.lookup("IEB_386_WHEEL.WHL_SPD_FL").vss == "Vehicle.Chassis.Axle.Row1.Wheel.Left.Speed"


@pytest.mark.skipif(not (SHARED / "opendbc" / "nissan_leaf_2018_generated.dbc").exists(), reason="shared data")
def test_opendbc_nissan_units_in_capitals_and_angle_rates(tmp_path):
    signals, _ = _draft(tmp_path, SHARED / "opendbc" / "nissan_leaf_2018_generated.dbc")
    paths = _paths(signals)
    assert paths["WHEEL_SPEEDS_FRONT.WHEEL_SPEED_FL"] == "Vehicle.Chassis.Axle.Row1.Wheel.Left.Speed"  # "KPH"
    assert len(paths) == 4
    assert signals["STEER_ANGLE_SENSOR.STEER_ANGLE_RATE"]["vss"] == ""  # a rate is not the angle


def test_two_signals_for_one_path_get_neither():
    proposals = propose([("BMS_A", "BAT_SOC", "%"), ("BMS_B", "HV_SOC", "%"), ("ESP", "VehicleSpeed", "km/h")])
    assert proposals["ESP.VehicleSpeed"].path == "Vehicle.Speed"
    for key in ("BMS_A.BAT_SOC", "BMS_B.HV_SOC"):
        assert proposals[key].path is None
        assert proposals[key].reason == ("2 signals would take Vehicle.Powertrain.TractionBattery.StateOfCharge"
                                         ".Current (BMS_A.BAT_SOC, BMS_B.HV_SOC): pick one")


def test_the_packaged_list_names_its_release_and_only_vss_paths():
    release, paths = known_paths()
    assert release == "4.0" and len(paths) == 25
    assert all(p.path.startswith("Vehicle.") and p.units and p.names for p in paths)
    assert len({p.path for p in paths}) == len(paths)


def test_drafted_categories_follow_the_matched_path_and_agree_with_the_reviewed_catalogs(tmp_path):
    for name in ("CSS-Electronics-SAE-J1939-DEMO", "canmod-gps"):
        signals, _ = _draft(tmp_path, ROOT / f"dbc/css-electronics/{name}.dbc")
        reviewed = load_catalog(ROOT / f"dbc/css-electronics/{name}.catalog.yaml")
        matched = {key: entry["category"] for key, entry in signals.items() if entry["vss"]}
        assert matched == {key: reviewed.lookup(key).category for key in matched}, name
    assert signals["gnss_odo.DistanceTotal"]["category"] == "driving"  # the name guess ("gnss") says location
    kona, _ = _draft(tmp_path, ROOT / "dbc/kona-ev/pcan.dbc")
    # "LAT" in LAT_ACCEL is lateral, not latitude: the matched path says driving.
    assert [kona[k]["category"] for k in ("StabilityControl.LAT_ACCEL", "Odometer.Odometer", "BMS_542.SocDisp",
                                          "IEB_386_WHEEL.WHL_SPD_RR")] == ["driving", "driving", "charging",
                                                                            "driving"]


def test_drafted_position_signals_are_location_for_the_privacy_rules(tmp_path):
    """What the privacy stage decides from a drafted catalog: the position is location, nothing else is
    moved into or out of it by the rule that keys on VSS paths."""
    out = tmp_path / "canmod-gps.catalog.yaml"
    assert main(["catalog", "init", str(ROOT / "dbc/css-electronics/canmod-gps.dbc"), "-o", str(out)]) == 0
    bus_dbcs = load_dbcs([str(ROOT / "dbc/css-electronics/canmod-gps.dbc")])
    specs = Decoder(bus_dbcs, load_catalogs(bus_dbcs, [str(out)])).specs
    location = sorted(key for key, spec in specs.items() if category_of(spec) == "location")
    assert location == sorted(key for key, spec in specs.items() if spec.category == "location")
    assert specs["gnss_pos.Latitude"].vss_path == "Vehicle.CurrentLocation.Latitude"
    assert category_of(specs["gnss_pos.Latitude"]) == category_of(specs["gnss_pos.Longitude"]) == "location"


def test_a_packaged_path_entry_with_a_wrong_category_is_refused():
    with pytest.raises(ValueError, match=r"Vehicle\.CurrentLocation\.Latitude: a position path must be in category"):
        checked_category({"path": "Vehicle.CurrentLocation.Latitude", "category": "driving"})
    with pytest.raises(ValueError, match=r"Vehicle\.Speed: category 'speedy' is not one of"):
        checked_category({"path": "Vehicle.Speed", "category": "speedy"})
    assert all(p.category == "location" for p in known_paths()[1] if p.path.startswith("Vehicle.CurrentLocation."))


def test_catalog_init_on_a_missing_or_broken_dbc_names_the_file_and_line(tmp_path, capsys):
    assert main(["catalog", "init", str(tmp_path / "nope.dbc"), "-o", "-"]) == 2
    assert f"{tmp_path / 'nope.dbc'}: cannot read DBC" in capsys.readouterr().err
    broken = tmp_path / "broken.dbc"
    broken.write_text('VERSION ""\nBO_ 100 M: 8 X\n SG_ S : 0|8@1+ (1,0) [0|0] "" X\nBO_ zz\n')
    assert main(["catalog", "init", str(broken), "-o", "-"]) == 2
    captured = capsys.readouterr()
    assert f"{broken}:4: cannot load DBC" in captured.err and captured.out == ""
    assert not (tmp_path / "broken.catalog.yaml").exists()
