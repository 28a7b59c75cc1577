"""Shared helpers for the collect-stage tests: a small DBC + catalog, frame builders, a list sink."""

from __future__ import annotations

import cantools

from agent.catalog import Catalog, CatalogEntry
from agent.decode import spec_for
from agent.model import DecodedFrame, Row, SignalSpec

TEST_DBC = """VERSION ""

NS_ :

BS_:

BU_: ECU

BO_ 256 Wheels: 8 ECU
 SG_ Speed : 0|16@1+ (0.01,0) [0|655.35] "km/h" ECU
 SG_ Accel : 16|16@1- (0.001,0) [-32|32] "m/s2" ECU
 SG_ Counter : 32|8@1+ (1,0) [0|255] "" ECU

BO_ 257 Safety: 2 ECU
 SG_ AEB : 0|1@1+ (1,0) [0|1] "" ECU
 SG_ Gear : 8|3@1+ (1,0) [0|7] "" ECU

BO_ 258 Battery: 2 ECU
 SG_ Soc : 0|8@1+ (0.5,0) [0|100] "%" ECU
 SG_ Temp : 8|8@1+ (1,-40) [-40|215] "degC" ECU

VAL_ 257 Gear 0 "P" 1 "R" 2 "N" 3 "D" ;
"""

CATALOG = Catalog("<test>", {
    "Wheels.Speed": CatalogEntry("Vehicle.Speed", "km/h", "driving"),
    "Wheels.Accel": CatalogEntry("Vehicle.Acceleration.Longitudinal", "m/s2", "driving"),
    "Safety.AEB": CatalogEntry("Vehicle.ADAS.EBA.IsEngaged", "", "incident"),
    "Safety.Gear": CatalogEntry("Vehicle.Powertrain.Transmission.CurrentGear", "", "driving"),
    "Battery.Soc": CatalogEntry("Vehicle.Powertrain.TractionBattery.StateOfCharge.Current", "%", "charging"),
    "Battery.Temp": CatalogEntry("Vehicle.Powertrain.TractionBattery.Temperature.Average", "degC",
                                 "vehicle_health"),
})

FRAME_IDS = {"Wheels": 256, "Safety": 257, "Battery": 258}


def make_specs() -> dict[str, SignalSpec]:
    database = cantools.database.load_string(TEST_DBC, database_format="dbc")
    specs = {}
    for message in database.messages:
        for signal in message.signals:
            spec = spec_for(message, signal, CATALOG)
            specs[spec.key] = spec
    return specs


def frame(t: float, message: str, bus: str = "can0", **raw: int | float) -> DecodedFrame:
    return DecodedFrame(t, bus, FRAME_IDS[message], message, dict(raw))


def wheels(t: float, speed: int, accel: int = 0, counter: int = 0, bus: str = "can0") -> DecodedFrame:
    return frame(t, "Wheels", bus, Speed=speed, Accel=accel, Counter=counter)


class ListSink:
    def __init__(self) -> None:
        self.rows: list[Row] = []

    def put(self, row: Row) -> None:
        self.rows.append(row)

    def stream(self, name: str) -> list[Row]:
        return [row for row in self.rows if row.stream == name]
