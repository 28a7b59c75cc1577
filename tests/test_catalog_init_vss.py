"""`catalog init` proposes official VSS paths only where a real DBC signal clearly matches (name and unit),
and leaves every other signal for review with the reason, instead of inventing paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agent.catalog import load_catalog
from agent.cli.main import main
from agent.vss import known_paths, propose

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
