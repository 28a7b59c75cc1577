"""Write ``obd2_j1979.dbc`` and ``obd2_j1979.catalog.yaml`` (run: ``python dbc/obd2/make_obd2_dbc.py``).

Our own description of OBD-II mode 01 responses, written from the public SAE J1979 / ISO 15031-5 PID
definitions (data bytes A, B, ... and their formulas).  One message per ISO 15765-4 response id
(0x7E8..0x7EF, ``OBD2_ECU_7E8`` ...), 8 bytes, numbered in the CSS Electronics layout the agent's
transport decoder uses (agent/transport_decode.py): byte 0 = the ISO-TP length, byte 1 = the service
(0x41 for a mode 01 response), byte 2 = the PID, bytes 3.. = data A, B, C, D.

Multiplexing is extended (``SG_MUL_VAL_``, which cantools decodes): ``Service`` is the top multiplexor;
``PID`` is multiplexed by Service 0x41 and is itself the multiplexor of the PID signals.  Service 0x43 /
0x47 / 0x4A (DTC responses: byte 2 is the DTC count on CAN) and 0x7F (negative response) get their
few fixed fields too, so such a single frame decodes instead of counting as a decode error.

Multi-byte values are big-endian (A is the high byte), hence Motorola signals; a Motorola start bit is
the MSB's bit number, bit 7 of its byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RESPONSE_IDS = range(0x7E8, 0x7F0)
SERVICE_MODE01 = 0x41
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class PidSignal:
    pid: int
    name: str
    byte: int  # data byte: 0 = A, 1 = B ...
    bits: int  # length in bits; a value starting in the MSB of its byte unless msb_bit says otherwise
    scale: float
    offset: float
    minimum: float
    maximum: float
    unit: str
    vss: str  # COVESA VSS 4.0 Vehicle.OBD path ("" = none: the signal keeps its DBC name)
    category: str
    msb_bit: int = 7  # bit (7..0) of the first byte holding the value's MSB
    comment: str = ""
    choices: tuple[tuple[int, str], ...] = ()


HEALTH, DRIVING = "vehicle_health", "driving"
PCT = 100 / 255

# (J1979 formula in the comment; "A" is data byte A.)
SIGNALS: tuple[PidSignal, ...] = (
    PidSignal(0x00, "PidsSupported_01_20", 0, 32, 1, 0, 0, 4294967295, "", "", HEALTH,
              comment="PID 00: bit field, MSB = PID 01 ... LSB = PID 20"),
    PidSignal(0x01, "MilOn", 0, 1, 1, 0, 0, 1, "", "Vehicle.OBD.Status.IsMILOn", HEALTH,
              comment="PID 01 A7: malfunction indicator lamp", choices=((0, "Off"), (1, "On"))),
    PidSignal(0x01, "DtcCount", 0, 7, 1, 0, 0, 127, "", "Vehicle.OBD.Status.DTCCount", HEALTH, msb_bit=6,
              comment="PID 01 A6..A0: number of confirmed emission-related DTCs"),
    PidSignal(0x04, "EngineLoad", 0, 8, PCT, 0, 0, 100, "%", "Vehicle.OBD.EngineLoad", HEALTH,
              comment="PID 04: calculated engine load, A*100/255"),
    PidSignal(0x05, "CoolantTemperature", 0, 8, 1, -40, -40, 215, "degC", "Vehicle.OBD.CoolantTemperature",
              HEALTH, comment="PID 05: engine coolant temperature, A-40"),
    PidSignal(0x0B, "IntakeManifoldPressure", 0, 8, 1, 0, 0, 255, "kPa", "Vehicle.OBD.MAP", HEALTH,
              comment="PID 0B: intake manifold absolute pressure, A"),
    PidSignal(0x0C, "EngineSpeed", 0, 16, 0.25, 0, 0, 16383.75, "rpm", "Vehicle.OBD.EngineSpeed", HEALTH,
              comment="PID 0C: engine speed, (256A+B)/4"),
    PidSignal(0x0D, "VehicleSpeed", 0, 8, 1, 0, 0, 255, "km/h", "Vehicle.OBD.Speed", DRIVING,
              comment="PID 0D: vehicle speed, A"),
    PidSignal(0x0E, "TimingAdvance", 0, 8, 0.5, -64, -64, 63.5, "deg", "Vehicle.OBD.TimingAdvance", HEALTH,
              comment="PID 0E: timing advance before TDC, A/2-64"),
    PidSignal(0x0F, "IntakeAirTemperature", 0, 8, 1, -40, -40, 215, "degC", "Vehicle.OBD.IntakeTemp", HEALTH,
              comment="PID 0F: intake air temperature, A-40"),
    PidSignal(0x10, "MafAirFlowRate", 0, 16, 0.01, 0, 0, 655.35, "g/s", "Vehicle.OBD.MAF", HEALTH,
              comment="PID 10: mass air flow rate, (256A+B)/100"),
    PidSignal(0x11, "ThrottlePosition", 0, 8, PCT, 0, 0, 100, "%", "Vehicle.OBD.ThrottlePosition", DRIVING,
              comment="PID 11: absolute throttle position, A*100/255"),
    PidSignal(0x1F, "RunTimeSinceStart", 0, 16, 1, 0, 0, 65535, "s", "Vehicle.OBD.RunTime", DRIVING,
              comment="PID 1F: run time since engine start, 256A+B"),
    PidSignal(0x20, "PidsSupported_21_40", 0, 32, 1, 0, 0, 4294967295, "", "", HEALTH,
              comment="PID 20: bit field, MSB = PID 21 ... LSB = PID 40"),
    PidSignal(0x21, "DistanceWithMilOn", 0, 16, 1, 0, 0, 65535, "km", "Vehicle.OBD.DistanceWithMIL", DRIVING,
              comment="PID 21: distance traveled with the MIL on, 256A+B"),
    PidSignal(0x2F, "FuelLevel", 0, 8, PCT, 0, 0, 100, "%", "Vehicle.OBD.FuelLevel", HEALTH,
              comment="PID 2F: fuel tank level input, A*100/255"),
    PidSignal(0x31, "DistanceSinceCodesCleared", 0, 16, 1, 0, 0, 65535, "km", "Vehicle.OBD.DistanceSinceDTCClear",
              DRIVING, comment="PID 31: distance traveled since codes cleared, 256A+B"),
    PidSignal(0x33, "BarometricPressure", 0, 8, 1, 0, 0, 255, "kPa", "Vehicle.OBD.BarometricPressure", HEALTH,
              comment="PID 33: absolute barometric pressure, A"),
    PidSignal(0x40, "PidsSupported_41_60", 0, 32, 1, 0, 0, 4294967295, "", "", HEALTH,
              comment="PID 40: bit field, MSB = PID 41 ... LSB = PID 60"),
    PidSignal(0x42, "ControlModuleVoltage", 0, 16, 0.001, 0, 0, 65.535, "V", "Vehicle.OBD.ControlModuleVoltage",
              HEALTH, comment="PID 42: control module voltage, (256A+B)/1000"),
    PidSignal(0x46, "AmbientAirTemperature", 0, 8, 1, -40, -40, 215, "degC", "Vehicle.OBD.AmbientAirTemperature",
              HEALTH, comment="PID 46: ambient air temperature, A-40"),
    PidSignal(0x5B, "HybridBatteryRemaining", 0, 8, PCT, 0, 0, 100, "%", "Vehicle.OBD.HybridBatteryRemaining",
              HEALTH, comment="PID 5B: hybrid/EV battery pack remaining life, A*100/255"),
    PidSignal(0x5C, "EngineOilTemperature", 0, 8, 1, -40, -40, 210, "degC", "Vehicle.OBD.OilTemperature", HEALTH,
              comment="PID 5C: engine oil temperature, A-40"),
    PidSignal(0x5E, "EngineFuelRate", 0, 16, 0.05, 0, 0, 3212.75, "L/h", "Vehicle.OBD.FuelRate", HEALTH,
              comment="PID 5E: engine fuel rate, (256A+B)/20"),
)

# Fields of the other responses a single frame may carry: (service, name, byte of the SDU after the service,
# comment).  Byte numbers here count from the DBC's byte 2.
OTHER_FIELDS: tuple[tuple[int, str, str], ...] = (
    (0x43, "StoredDtcCount", "mode 03 response on CAN: number of stored DTCs that follow"),
    (0x47, "PendingDtcCount", "mode 07 response on CAN: number of pending DTCs that follow"),
    (0x4A, "PermanentDtcCount", "mode 0A response on CAN: number of permanent DTCs that follow"),
    (0x7F, "RejectedService", "negative response: the service id of the rejected request"),
)
PROTOCOL_SIGNALS = ("Length", "Service", "PID", *(name for _, name, _ in OTHER_FIELDS), "NegativeResponseCode")
SERVICE_CHOICES = ((0x41, "Mode01CurrentData"), (0x43, "Mode03StoredDtcs"), (0x47, "Mode07PendingDtcs"),
                   (0x4A, "Mode0APermanentDtcs"), (0x7F, "NegativeResponse"))


def _number(value: float) -> str:
    return repr(float(value)).removesuffix(".0") if float(value).is_integer() else repr(float(value))


def _signal_line(name: str, mux: str, start_bit: int, bits: int, scale: float, offset: float, minimum: float,
                 maximum: float, unit: str) -> str:
    marker = f" {mux}" if mux else ""
    return (f' SG_ {name}{marker} : {start_bit}|{bits}@0+ ({_number(scale)},{_number(offset)}) '
            f'[{_number(minimum)}|{_number(maximum)}] "{unit}" Tester')


def message_lines(frame_id: int) -> list[str]:
    lines = [f"BO_ {frame_id} OBD2_ECU_{frame_id:X}: 8 ECU_{frame_id:X}",
             _signal_line("Length", "", 7, 8, 1, 0, 0, 255, ""),
             _signal_line("Service", "M", 15, 8, 1, 0, 0, 255, ""),
             _signal_line("PID", f"m{SERVICE_MODE01}M", 23, 8, 1, 0, 0, 255, "")]
    for service, name, _ in OTHER_FIELDS:
        lines.append(_signal_line(name, f"m{service}", 23, 8, 1, 0, 0, 255, ""))
    lines.append(_signal_line("NegativeResponseCode", "m127", 31, 8, 1, 0, 0, 255, ""))
    for s in SIGNALS:
        start_bit = (3 + s.byte) * 8 + s.msb_bit
        lines.append(_signal_line(s.name, f"m{s.pid}", start_bit, s.bits, s.scale, s.offset, s.minimum, s.maximum,
                                  s.unit))
    return lines


def dbc_text() -> str:
    out = ['VERSION ""', "", "", "NS_ :", "\tCM_", "\tBA_DEF_", "\tBA_", "\tVAL_", "\tSG_MUL_VAL_", "", "BS_:", "",
           "BU_: Tester " + " ".join(f"ECU_{i:X}" for i in RESPONSE_IDS), "", ""]
    for frame_id in RESPONSE_IDS:
        out += [*message_lines(frame_id), ""]
    out.append("")
    out.append('CM_ "OBD-II (SAE J1979 / ISO 15031-5) mode 01 responses on ISO 15765-4 CAN, 11-bit ids. Our own '
               'file, written from the public PID definitions; see README.md. Generated by make_obd2_dbc.py.";')
    for frame_id in RESPONSE_IDS:
        out.append(f'CM_ BO_ {frame_id} "Responses of the ECU answering on 0x{frame_id:X} (request id '
                   f'0x{frame_id - 8:X}). Byte 0 = ISO-TP length, byte 1 = service, byte 2 = PID.";')
        out.append(f'CM_ SG_ {frame_id} Length "ISO-TP payload length (single frame PCI byte)";')
        for s in SIGNALS:
            out.append(f'CM_ SG_ {frame_id} {s.name} "{s.comment}";')
        for _, name, comment in OTHER_FIELDS:
            out.append(f'CM_ SG_ {frame_id} {name} "{comment}";')
    out.append("")
    for frame_id in RESPONSE_IDS:
        out.append(f"VAL_ {frame_id} Service " + " ".join(f'{v} "{n}"' for v, n in SERVICE_CHOICES) + " ;")
        for s in SIGNALS:
            if s.choices:
                out.append(f"VAL_ {frame_id} {s.name} " + " ".join(f'{v} "{n}"' for v, n in s.choices) + " ;")
    out.append("")
    for frame_id in RESPONSE_IDS:
        out.append(f"SG_MUL_VAL_ {frame_id} PID Service {SERVICE_MODE01}-{SERVICE_MODE01};")
        for service, name, _ in OTHER_FIELDS:
            out.append(f"SG_MUL_VAL_ {frame_id} {name} Service {service}-{service};")
        out.append(f"SG_MUL_VAL_ {frame_id} NegativeResponseCode Service 127-127;")
        for s in SIGNALS:
            out.append(f"SG_MUL_VAL_ {frame_id} {s.name} PID {s.pid}-{s.pid};")
    return "\n".join(out) + "\n"


def catalog_text() -> str:
    lines = ["# Signal catalog of obd2_j1979.dbc (generated with it by make_obd2_dbc.py; reviewed by hand).",
             "# VSS paths: COVESA VSS 4.0 Vehicle.OBD (every responding ECU maps to the same path: the message",
             "# name says which ECU answered).  Speed, throttle, run time and distances describe how the car",
             "# is driven (driving); the rest is engine and vehicle condition (vehicle_health).  The protocol",
             "# fields (Length, Service, PID, the DTC counts of modes 03/07/0A, negative responses) are",
             "# unclassified: they describe the exchange, not the vehicle, and never leave the car.",
             "dbc: obd2_j1979.dbc",
             "signals:"]
    for frame_id in RESPONSE_IDS:
        for name in PROTOCOL_SIGNALS:
            lines += [f"  OBD2_ECU_{frame_id:X}.{name}:", '    vss: ""', '    unit: ""', "    category: unclassified"]
        for s in SIGNALS:
            lines.append(f"  OBD2_ECU_{frame_id:X}.{s.name}:")
            lines.append(f'    vss: {s.vss or chr(34) * 2}')
            lines.append(f'    unit: "{s.unit}"')
            lines.append(f"    category: {s.category}")
    return "\n".join(lines) + "\n"


def main() -> None:
    (HERE / "obd2_j1979.dbc").write_text(dbc_text(), encoding="ascii")
    (HERE / "obd2_j1979.catalog.yaml").write_text(catalog_text(), encoding="utf-8")


if __name__ == "__main__":
    main()
