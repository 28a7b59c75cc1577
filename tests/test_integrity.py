"""Transport signals checked in the car (issue 15): checksum algorithms, rolling counters, role inference,
and the simulator's checksum= / counter= faults counted exactly by the checker."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import can
import pytest

from agent.dbc import load_dbc
from agent.integrity.checker import TransportChecker, layout_for, layouts_from_dbcs
from agent.integrity.checksums import (
    ALGORITHMS,
    CRC8_H2F,
    CRC8_J1850,
    CRC16_XMODEM,
    algorithm_for,
    chrysler,
    crc8,
    crc16,
    detect_algorithm,
    family_of,
)
from agent.integrity.counters import JUMP, OK, REPEAT, RESYNC, CounterTrack
from agent.integrity.fields import group_fields
from agent.integrity.infer import infer_roles, role_by_name
from agent.model import DATA_ROLE
from agent.sources.log import LogSource
from simulator.cli import main as sim_main
from simulator.faults import FaultInjector, FaultSpecError, TransportFaults, parse_fault_spec

pytestmark = pytest.mark.integrity

KONA = "dbc/kona-ev-dbc/derived/"
KONA_2019 = "logs/kona_ev_2019_pcan_ccan_power_on_ready.log"
KONA_2020 = "logs/kona_ev_2020_comp_can_heating_clock_reset.log"
OPENDBC = "dbc/opendbc/"


@pytest.fixture(autouse=True)
def _quiet_cantools():
    logging.getLogger("agent.dbc").setLevel(logging.ERROR)  # opendbc's DBCs load with strict=False warnings


def frame(address: int, data: bytes, extended: bool = False, timestamp: float = 0.0) -> can.Message:
    return can.Message(arbitration_id=address, data=data, is_extended_id=extended, timestamp=timestamp)


# -- algorithms on known vectors -------------------------------------------------------------------------


def test_crc_engines_give_the_catalogued_check_values():
    # The "check" of each CRC in the catalogue of parametrised CRCs: the CRC of b"123456789".
    assert crc8(CRC8_J1850, b"123456789", 0xFF, 0xFF) == 0x4B  # CRC-8/SAE-J1850
    assert crc8(CRC8_H2F, b"123456789", 0xFF, 0xFF) == 0xDF  # CRC-8/AUTOSAR (8H2F)
    assert crc16(CRC16_XMODEM, b"123456789", 0) == 0x31C3  # CRC-16/XMODEM


def _vw_messages(shared_data: Path):
    return load_dbc(shared_data / OPENDBC / "vw_mqb.dbc")


# Recorded frames from opendbc's test_checksums.py (one per counter value) for three MQB messages.
VW_RECORDED = {
    "LWI_01": (0x86, ["6b00bd0000000000", "ee010a0000000000", "d802a90000000000", "0303bea212000000",
                      "7b04312003000000", "8b05e28509000000", "6306132100000000", "6607050000000000",
                      "49080d0000000000", "5f097e6001000000", "af0a722000000000", "590b1b0000000000",
                      "a80c060000000000", "bc0d722000000000", "f90e0f0000000000", "600f62c000000000"]),
    "ESP_21": (0xFD, ["66d01f8045050000", "87d11f8052050000", "cdd21f8050060000", "fdd31f8035020000",
                      "fad41f8022050000", "fdd51f8084040000", "2ed61f80f0030000", "9fd71f8000000000",
                      "1ed81f80b3030000", "61d91f806d050000", "44da1f8047020000", "86db1f803a020000",
                      "39dc1f80cb010000", "19dd1f8000000000", "8cde1f80ba040000", "fbdf1f8046000000"]),
    "Klemmen_Status_01": (0x3C0, ["74000300", "c1010300", "31020300", "84030300", "fe040300", "4b050300",
                                  "bb060300", "0e070300", "4f080300", "fa090300", "0a0a0300", "bf0b0300",
                                  "c50c0300", "700d0300", "800e0300", "350f0300"]),
}


def test_vw_mqb_crc_matches_every_recorded_frame_of_opendbcs_tests(shared_data):
    loaded = _vw_messages(shared_data)
    assert family_of(loaded.path) == "vw_mqb"
    for name, (address, frames) in VW_RECORDED.items():
        message = loaded.database.get_message_by_name(name)
        assert message.frame_id == address
        field = group_fields(message, ["CHECKSUM"])[0]
        algorithm = algorithm_for(address, field, loaded.path)
        assert algorithm is not None and algorithm.name == "vw_mqb"
        payloads = [bytes.fromhex(text) for text in frames]
        assert [algorithm.compute(address, data, field) for data in payloads] == [data[0] for data in payloads]
        # Any other byte changed: the CRC no longer matches.
        assert algorithm.compute(address, payloads[3][:2] + b"\x00" + payloads[3][3:], field) != payloads[3][0]


def test_vw_mqb_message_without_a_known_data_id_is_not_checked(shared_data):
    loaded = _vw_messages(shared_data)
    message = loaded.database.get_message_by_name("PLA_01")  # 0x130: opendbc knows no data IDs for it
    field = group_fields(message, ["CHECKSUM"])[0]
    assert message.frame_id == 0x130 and algorithm_for(message.frame_id, field, loaded.path) is None


HONDA_LKAS_HUD = """VERSION ""
BS_:
BU_: ADAS
BO_ 829 LKAS_HUD: 5 ADAS
 SG_ SET_ME_X41 : 6|7@0+ (1,0) [0|127] "" ADAS
 SG_ SOLID_LANES : 10|1@0+ (1,0) [0|1] "" ADAS
 SG_ STEERING_REQUIRED : 8|1@0+ (1,0) [0|1] "" ADAS
 SG_ BEEP : 17|2@0+ (1,0) [0|1] "" ADAS
 SG_ COUNTER : 37|2@0+ (1,0) [0|3] "" ADAS
 SG_ CHECKSUM : 35|4@0+ (1,0) [0|15] "" ADAS
BO_ 2147496922 LKAS_HUD_A: 5 ADAS
 SG_ SET_ME_X41 : 6|7@0+ (1,0) [0|127] "" ADAS
 SG_ SOLID_LANES : 10|1@0+ (1,0) [0|1] "" ADAS
 SG_ STEERING_REQUIRED : 8|1@0+ (1,0) [0|1] "" ADAS
 SG_ BEEP : 17|2@0+ (1,0) [0|1] "" ADAS
 SG_ COUNTER : 37|2@0+ (1,0) [0|3] "" ADAS
 SG_ CHECKSUM : 35|4@0+ (1,0) [0|15] "" ADAS
"""


def test_honda_checksums_are_opendbcs_known_values_for_standard_and_extended_ids(tmp_path):
    # opendbc test_honda_checksum: LKAS_HUD (0x33D) and LKAS_HUD_A (29-bit 0x33DA) of honda_accord_2018, with
    # SET_ME_X41=0x41, STEERING_REQUIRED=1, SOLID_LANES=1, BEEP=0 and counters 0..3: [11,10,9,8] and [4,3,2,1].
    path = tmp_path / "honda_accord_2018_can_lkas_hud.dbc"
    path.write_text(HONDA_LKAS_HUD)
    loaded = load_dbc(path)
    values = {"SET_ME_X41": 0x41, "STEERING_REQUIRED": 1, "SOLID_LANES": 1, "BEEP": 0, "CHECKSUM": 0}
    for name, expected in (("LKAS_HUD", [11, 10, 9, 8]), ("LKAS_HUD_A", [4, 3, 2, 1])):
        message = loaded.database.get_message_by_name(name)
        field = group_fields(message, ["CHECKSUM"])[0]
        algorithm = algorithm_for(message.frame_id, field, loaded.path)
        assert algorithm is not None and algorithm.name == "honda"
        frames = [message.encode({**values, "COUNTER": counter}) for counter in range(4)]
        assert frames[1] == bytes((0x41, 0x05, 0x00, 0x00, 0x10))
        assert [algorithm.compute(message.frame_id, data, field) for data in frames] == expected
    # The checker on those frames, checksums filled in: every frame right, every counter step +1.
    checker = TransportChecker.from_dbcs({"*": [loaded]}, lambda m, s: role_by_name(s))
    hud = loaded.database.get_message_by_name("LKAS_HUD")
    for counter, checksum in zip(range(4), [11, 10, 9, 8]):
        checker.on_raw("can0", frame(829, hud.encode({**values, "COUNTER": counter, "CHECKSUM": checksum}),
                                     timestamp=counter * 0.1))
    assert checker.snapshot()["can0"]["LKAS_HUD"] == {
        "frames": 4, "checked": 4, "short": 0, "counter_ok": 3, "counter_jumps": 0, "counter_repeats": 0,
        "counter_resyncs": 1, "checksum_ok": 4, "checksum_failures": 0, "checksum_not_checked": 0}


def test_toyota_checksum_hand_computed_on_a_frame_of_the_prius_dbc(shared_data):
    loaded = load_dbc(shared_data / OPENDBC / "toyota_prius_2010_pt.dbc")
    message = loaded.database.get_message_by_name("GEAR_PACKET")  # 0x127, 8 bytes, checksum in byte 7
    data = message.encode({"CAR_MOVEMENT": 5, "GEAR": 3, "COUNTER": 0x21, "CHECKSUM": 0})
    assert data == bytes.fromhex("0000000005302100")
    field = group_fields(message, ["CHECKSUM"])[0]
    algorithm = algorithm_for(0x127, field, loaded.path)
    assert algorithm is not None and algorithm.name == "toyota"
    # length 8 + address bytes 0x01 + 0x27 + data bytes 0x05 + 0x30 + 0x21 = 134 = 0x86
    assert algorithm.compute(0x127, data, field) == 8 + 0x01 + 0x27 + 0x05 + 0x30 + 0x21 == 0x86
    # STEERING_LKA in this DBC puts its checksum in byte 4 of 8: not where Toyota's sits, so not checked.
    lka = loaded.database.get_message_by_name("STEERING_LKA")
    assert algorithm_for(lka.frame_id, group_fields(lka, ["CHECKSUM"])[0], loaded.path) is None


def test_chrysler_checksum_is_crc8_j1850_and_matches_openpilots_known_frame():
    # openpilot chryslercan_test.py: data 14 00 00 00 20, "good checksum: cc".
    assert chrysler(0x292, bytes.fromhex("14000000" "20" "cc"), None) == 0xCC  # type: ignore[arg-type]
    rng = random.Random(3)
    for _ in range(200):  # the bit loop of the "Remote Car Hacking" paper, as opendbc has it
        data = bytes(rng.randrange(256) for _ in range(rng.randint(2, 8)))
        checksum = 0xFF
        for byte in data[:-1]:
            for bit in range(7, -1, -1):
                feedback = ((checksum >> 7) ^ (byte >> bit)) & 1
                checksum = ((checksum << 1) & 0xFF) ^ (0x1D if feedback else 0)
        assert chrysler(0, data, None) == checksum ^ 0xFF  # type: ignore[arg-type]


def _bitwise_crc16_xmodem(data: bytes, crc: int = 0) -> int:
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def test_hyundai_can_fd_crc16_over_the_payload_and_the_address(shared_data):
    loaded = load_dbc(shared_data / OPENDBC / "hyundai_canfd_generated.dbc")
    message = loaded.database.get_message_by_name("LKAS")  # 0x50, 16 bytes, CHECKSUM 0|16, COUNTER 16|8
    field = group_fields(message, ["CHECKSUM"])[0]
    algorithm = algorithm_for(0x50, field, loaded.path)
    assert algorithm is not None and algorithm.name == "hkg_can_fd"
    data = bytes.fromhex("0000" "2a" "0b" "00000000000000000000" "0000")
    expected = _bitwise_crc16_xmodem(data[2:] + bytes((0x50, 0x00))) ^ 0x041D  # 16-byte frames: XOR 0x041D
    assert algorithm.compute(0x50, data, field) == expected == 0xD93A
    signed = field.with_value(data, expected)
    assert signed[:2] == bytes((0x3A, 0xD9)) and field.value(signed) == 0xD93A  # little-endian in bytes 0-1


def test_hyundai_crc8_follows_crcmods_init_semantics():
    # opendbc hyundaican.py: crcmod.mkCrcFun(0x11D, initCrc=0xFD, rev=False, xorOut=0xDF); crcmod computes
    # xorOut ^ raw(data, initCrc ^ xorOut): the shift register starts at 0x22, not 0xFD.
    algorithm = ALGORITHMS["hkg_crc8"]
    layout = layout_for(_fca11_like(), [], ["CR_FCA_ChkSum"], "hkg_crc8")
    field = layout.checksums[0][0]
    data = bytes.fromhex("0102030405060700")

    register = 0xFD ^ 0xDF
    for byte in data[:7]:
        register ^= byte
        for _ in range(8):
            register = ((register << 1) ^ 0x1D) & 0xFF if register & 0x80 else (register << 1) & 0xFF
    assert algorithm.compute(0x38D, data, field) == register ^ 0xDF == 0x44


def _fca11_like():
    import cantools

    return cantools.database.load_string(
        'VERSION ""\nBS_:\nBU_: X\nBO_ 909 FCA11: 8 X\n SG_ CR_FCA_Alive : 52|4@1+ (1,0) [0|15] "" X\n'
        ' SG_ CR_FCA_ChkSum : 56|8@1+ (1,0) [0|255] "" X\n', database_format="dbc").get_message_by_name("FCA11")


# -- fields -----------------------------------------------------------------------------------------------


def test_fields_read_what_cantools_decodes_in_both_byte_orders(shared_data):
    database = load_dbc(shared_data / KONA / "pcan.patched_BS_BU.dbc").database
    rng = random.Random(11)
    cases = [("VCU_109", "Checksum"), ("VCU_109", "Counter"), ("SCU_10C", "Checksum"), ("VCU_5D9", "Counter_Charging"),
             ("Steering", "Counter")]
    for message_name, signal in cases:
        message = database.get_message_by_name(message_name)
        field = group_fields(message, [signal])[0]
        for _ in range(100):
            data = bytes(rng.randrange(256) for _ in range(message.length))
            assert field.value(data) == message.decode(data, decode_choices=False, scaling=False)[signal]
            value = rng.randrange(field.modulus)
            changed = field.with_value(data, value)
            assert field.value(changed) == value
            assert bytes(a & m for a, m in zip(changed, field.clear_mask)) == field.cleared(data)  # rest kept


def test_split_lsb_msb_signals_are_one_field(shared_data):
    message = load_dbc(shared_data / KONA / "pcan.patched_BS_BU.dbc").database.get_message_by_name("IEB_386_WHEEL")
    (counter,) = group_fields(message, ["WHL_SPD_AliveCounter_LSB", "WHL_SPD_AliveCounter_MSB"])
    assert counter.name == "WHL_SPD_AliveCounter" and counter.length == 4 and counter.byte_indexes == (1, 3)
    data = counter.with_value(bytes(8), 0b1101)  # LSB piece in byte 1 bits 6-7, MSB piece in byte 3 bits 6-7
    assert data == bytes((0, 0x40, 0, 0xC0, 0, 0, 0, 0)) and counter.value(data) == 13


# -- counters ---------------------------------------------------------------------------------------------


def test_counter_steps_are_judged_ok_repeat_jump_or_resync():
    track = CounterTrack(16)
    seen = [track.step(value, time) for value, time in
            [(14, 0.0), (15, 0.01), (0, 0.02), (0, 0.03), (2, 0.04), (3, 3.0), (4, 3.01), (5, 1.5), (6, 1.49)]]
    # first frame; +1; wrap; same again; skipped 1; after a 2.96 s gap; +1; clock back 1.51 s; back 10 ms is fine
    assert seen == [RESYNC, OK, OK, REPEAT, JUMP, RESYNC, OK, RESYNC, OK]
    early = CounterTrack(15)  # a counter running 0..14
    assert [early.step(v, i / 100) for i, v in enumerate((13, 14, 0, 1))] == [RESYNC, OK, OK, OK]


# -- names and behaviour ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "role"), [
    ("Checksum", "checksum"), ("CHECKSUM", "checksum"), ("CF_Lkas_Chksum", "checksum"), ("CR_FCA_ChkSum", "checksum"),
    ("WHL_SPD_Checksum_LSB", "checksum"), ("FR_CMR_Crc1Val", "checksum"), ("SCCM_leftStalkCrc", "checksum"),
    ("DAS_status2Checksum", "checksum"), ("CF_Clu_ParityBit1", "checksum"), ("Airbag_01_CRC", "checksum"),
    ("Counter", "counter"), ("COUNTER", "counter"), ("CF_Clu_AliveCnt1", "counter"), ("CR_VSM_Alive", "counter"),
    ("AliveCounterWHL_PUL", "data"), ("WHL_SPD_AliveCounter_MSB", "counter"), ("CF_Lkas_MsgCount", "counter"),
    ("CAN_TX_ROLLING_COUNT_1", "counter"), ("SometimesCounter", "counter"), ("FR_CMR_AlvCnt1Val", "counter"),
    ("Counter10s", "data"), ("CF_Gway_CountryCfg", "data"), ("uwe542_12_Backcounter", "data"),
    ("RADC_a016_bdyInvalidCount", "data"), ("RADC_a020_bdyInvalidChkSm", "data"), ("DI_keepAliveRequest", "data"),
    ("Counter_Charging", "data"), ("MaybeClimateConsumption", "data"), ("CF_Clu_Vanz", "data"),
    ("_CHECKSUM", "checksum"),
])
def test_role_by_name(name, role):
    assert role_by_name(name) == role


def kona_proposals(shared_data: Path) -> dict:
    frames = list(LogSource(shared_data / KONA_2019))
    return infer_roles(load_dbc(shared_data / KONA / "pcan.patched_BS_BU.dbc").database, frames)


def test_behaviour_decides_which_kona_signals_are_counters_and_checksums(shared_data):
    proposals = kona_proposals(shared_data)
    transport = {key: (p.role, p.algorithm, p.modulus) for key, p in proposals.items() if p.role != DATA_ROLE}
    assert transport == {
        ("VCU_109", "Checksum"): ("checksum", "nibble_sum", None), ("VCU_109", "Counter"): ("counter", None, None),
        ("SCU_10C", "Checksum"): ("checksum", "nibble_sum", None), ("SCU_10C", "Counter"): ("counter", None, None),
        ("VCU_200", "Counter"): ("counter", None, None), ("VCU_201", "Counter1"): ("counter", None, None),
        ("VCU_201", "Unk"): ("checksum", "xor", None),  # not named so: the frames show an XOR checksum
        ("TractionControlFast", "Counter1"): ("counter", None, 15),  # runs 0..14
        ("StabilityControl", "Counter"): ("counter", None, None),
        ("StabilityControl", "Checksum"): ("checksum", None, None),  # named so, no known algorithm: not checked
        ("Steering", "Counter"): ("counter", None, None), ("Steering", "Checksum"): ("checksum", "nibble_xor", None),
        ("IEB_386_WHEEL", "WHL_SPD_AliveCounter_LSB"): ("counter", None, None),
        ("IEB_386_WHEEL", "WHL_SPD_AliveCounter_MSB"): ("counter", None, None),
        ("IEB_386_WHEEL", "WHL_SPD_Checksum_LSB"): ("checksum", "hkg_whl_spd", None),
        ("IEB_386_WHEEL", "WHL_SPD_Checksum_MSB"): ("checksum", "hkg_whl_spd", None),
        ("IEB_387_WHEEL", "WHL_PUL_Chksum"): ("checksum", "byte_sum", None),
        ("IEB_387_WHEEL", "AliveCounterWHL_PUL"): ("counter", None, 15),  # not named so; runs 0..14
        ("TractionControlMed", "Counter"): ("counter", None, None),
        ("TractionControlMed", "Checksum"): ("checksum", "hkg_tcs13", None),
        ("UNK_471", "Counter"): ("counter", None, None), ("VCU_592", "Counter"): ("counter", None, None),
        ("FATC_5F5", "Counter1"): ("counter", None, None), ("FATC_5F5", "Counter2"): ("counter", None, None),
    }  # FATC_5F5: its frames are shorter than the DBC says (8 of 64 bytes), so the names decide
    demoted = {key: p.reason for key, p in proposals.items() if p.role == DATA_ROLE}
    assert set(demoted) == {("BMS_597", "AliveCounterBit"), ("CGW_462", "SometimesCounter"), ("SBW_354", "Counter"),
                            ("TractionControlFast", "Counter2"), ("UNK_471", "MaybeCounter"), ("VCU_202", "Counter")}
    assert demoted[("CGW_462", "SometimesCounter")] == "named like a counter, but frames: 0 of the first 63 steps " \
                                                       "+1 modulo 16"


def test_without_frames_the_names_decide(shared_data):
    proposals = infer_roles(load_dbc(shared_data / KONA / "pcan.patched_BS_BU.dbc").database)
    assert proposals[("CGW_462", "SometimesCounter")].role == "counter"
    assert proposals[("StabilityControl", "Checksum")].reason == "name"
    assert ("VCU_201", "Unk") not in proposals


def test_detect_algorithm_needs_enough_frames(shared_data):
    message = load_dbc(shared_data / KONA / "pcan.patched_BS_BU.dbc").database.get_message_by_name("Steering")
    field = group_fields(message, ["Checksum"])[0]
    payloads = [bytes(m.data) for bus, m in LogSource(shared_data / KONA_2019)
                if bus == "pcan" and m.arbitration_id == 0x2B0]
    assert detect_algorithm(0x2B0, field, payloads) == "nibble_xor"
    assert detect_algorithm(0x2B0, field, payloads[:5]) is None


# -- the checker on the real logs ---------------------------------------------------------------------------


def kona_checker(shared_data: Path, proposals: dict) -> tuple[TransportChecker, dict]:
    pcan = load_dbc(shared_data / KONA / "pcan.patched_BS_BU.dbc")
    bus_dbcs = {"pcan": [pcan], "ccan": [load_dbc(shared_data / KONA / "ccan.patched_BS_BU.dbc"), pcan]}

    def role(message: str, signal: str) -> str:
        return proposals[(message, signal)].role if (message, signal) in proposals else DATA_ROLE

    def algorithm(message: str, signal: str) -> str | None:
        return proposals[(message, signal)].algorithm if (message, signal) in proposals else None

    def modulus(message: str, signal: str) -> int | None:
        return proposals[(message, signal)].modulus if (message, signal) in proposals else None

    return TransportChecker.from_dbcs(bus_dbcs, role, algorithm, modulus), bus_dbcs


def counts(frames: int, ok: int = 0, jumps: int = 0, checksum_ok: int = 0, not_checked: int = 0,
           short: int = 0, resyncs: int = 1) -> dict[str, int]:
    return {"frames": frames, "checked": frames - short, "short": short, "counter_ok": ok, "counter_jumps": jumps,
            "counter_repeats": 0, "counter_resyncs": resyncs, "checksum_ok": checksum_ok, "checksum_failures": 0,
            "checksum_not_checked": not_checked}


def test_kona_2019_log_checked_counters_and_checksums_exactly(shared_data):
    checker, _ = kona_checker(shared_data, kona_proposals(shared_data))
    for bus, msg in LogSource(shared_data / KONA_2019):
        checker.on_raw(bus, msg)
    both_buses = {  # the gateway forwards these P-CAN messages to C-CAN: the same counts on both
        "IEB_386_WHEEL": counts(542, 541, checksum_ok=542), "IEB_387_WHEEL": counts(542, 541, checksum_ok=542),
        "StabilityControl": counts(679, 678, not_checked=679), "Steering": counts(863, 862, checksum_ok=863),
        "TractionControlFast": counts(1085, 1084), "TractionControlMed": counts(339, 338, checksum_ok=339),
        "VCU_592": counts(108, 107),
    }
    assert checker.snapshot() == {"ccan": both_buses, "pcan": {
        **both_buses,
        "FATC_5F5": counts(65, short=65, resyncs=0),
        "SCU_10C": counts(1085, 1084, checksum_ok=1085),
        "UNK_471": counts(543, 542),
        # One frame of each VCU message missing at 1955.68 s (28 ms instead of 10 ms): one jump each.
        "VCU_109": counts(1084, 1082, jumps=1, checksum_ok=1084),
        "VCU_200": counts(1084, 1082, jumps=1),
        "VCU_201": counts(1084, 1082, jumps=1, checksum_ok=1084),
    }}
    assert checker.total() == {"frames": 13261, "checked": 13196, "short": 65, "counter_ok": 13174,
                               "counter_jumps": 3, "counter_repeats": 0, "counter_resyncs": 19,
                               "checksum_ok": 7825, "checksum_failures": 0, "checksum_not_checked": 1358}


def test_a_reloaded_checker_goes_on_from_the_one_it_replaces(shared_data):
    """A reload builds a new checker from the re-read DBCs and catalogs: its counts and counter states go on
    from the old one's, so the log split by a reload counts exactly what it counts in one piece."""
    proposals = kona_proposals(shared_data)
    frames = list(LogSource(shared_data / KONA_2019))
    whole, _ = kona_checker(shared_data, proposals)
    for bus, msg in frames:
        whole.on_raw(bus, msg)
    before, _ = kona_checker(shared_data, proposals)
    half = len(frames) // 2
    for bus, msg in frames[:half]:
        before.on_raw(bus, msg)
    # The new configuration no longer checks VCU_109's counter (its checksum still): it starts afresh.
    changed = {key: p for key, p in proposals.items() if key != ("VCU_109", "Counter")}
    after, _ = kona_checker(shared_data, changed)
    after.continue_from(before)
    for bus, msg in frames[half:]:
        after.on_raw(bus, msg)
    expected = whole.snapshot()
    got = after.snapshot()
    restarted = got["pcan"].pop("VCU_109")
    later = sum(1 for bus, msg in frames[half:] if bus == "pcan" and msg.arbitration_id == 0x109)
    assert expected["pcan"].pop("VCU_109")["frames"] == 1084 and restarted["frames"] == later > 0
    assert restarted["counter_ok"] == 0 and restarted["checksum_ok"] == restarted["frames"]
    assert got == expected


def test_kona_2020_comp_can_has_no_transport_signals_so_the_checker_is_empty(shared_data):
    loaded = load_dbc(shared_data / "dbc/kona-ev-dbc/comp_can.dbc")
    frames = list(LogSource(shared_data / KONA_2020))
    proposals = infer_roles(loaded.database, frames)
    assert {key: p for key, p in proposals.items() if p.role != DATA_ROLE} == {}
    checker = TransportChecker.from_dbcs({"*": [loaded]}, lambda m, s: role_by_name(s))
    assert checker.empty
    for bus, msg in frames:
        checker.on_raw(bus, msg)
    assert checker.snapshot() == {} and checker.total()["frames"] == 0


def test_checker_from_the_explicit_mapping(shared_data):
    database = load_dbc(shared_data / KONA / "pcan.patched_BS_BU.dbc").database
    steering, stability = (database.get_message_by_name(n) for n in ("Steering", "StabilityControl"))
    checker = TransportChecker({("pcan", 0x2B0): (steering, ["Counter"], ["Checksum"], "nibble_xor"),
                                ("pcan", 0x220): (stability, ["Counter"], ["Checksum"], None)})
    assert checker.describe() == {"pcan": {
        "StabilityControl": {"counters": {"Counter": 16}, "checksums": {"Checksum": None}},
        "Steering": {"counters": {"Counter": 16}, "checksums": {"Checksum": "nibble_xor"}}}}
    for bus, msg in LogSource(shared_data / KONA_2019):
        checker.on_raw(bus, msg)
    assert checker.snapshot() == {"pcan": {"StabilityControl": counts(679, 678, not_checked=679),
                                           "Steering": counts(863, 862, checksum_ok=863)}}


# -- bad input --------------------------------------------------------------------------------------------


def test_short_frames_unknown_ids_error_and_remote_frames(shared_data):
    database = load_dbc(shared_data / KONA / "pcan.patched_BS_BU.dbc").database
    steering = database.get_message_by_name("Steering")  # 5 bytes
    checker = TransportChecker({("*", 0x2B0): (steering, ["Counter"], ["Checksum"], "nibble_xor")})
    checksum = group_fields(steering, ["Checksum"])[0]  # byte 4 high nibble; the counter is its low nibble
    good = bytes.fromhex("1234000073")  # counter 3, checksum 7 = 1 ^ 2 ^ 3 ^ 4 ^ 3 (XOR of the other nibbles)
    assert ALGORITHMS["nibble_xor"].compute(0x2B0, good, checksum) == checksum.value(good) == 7
    checker.on_raw("can0", frame(0x2B0, good, timestamp=0.0))
    checker.on_raw("can0", frame(0x2B0, good[:3], timestamp=0.01))  # cut short: counted, not checked
    checker.on_raw("can0", frame(0x2B0, b"", timestamp=0.02))
    checker.on_raw("can0", frame(0x2B1, good, timestamp=0.03))  # no such message: ignored
    checker.on_raw("can0", frame(0x2B0, good, extended=True, timestamp=0.04))  # 29-bit 0x2B0: another id
    checker.on_raw("can0", can.Message(arbitration_id=0x2B0, is_error_frame=True, timestamp=0.05))
    checker.on_raw("can0", can.Message(arbitration_id=0x2B0, is_remote_frame=True, dlc=5, timestamp=0.06))
    wrong = good[:4] + bytes((good[4] ^ 0x10,))  # checksum nibble changed, counter still 3: a repeat too
    checker.on_raw("can0", frame(0x2B0, wrong, timestamp=0.07))
    assert checker.snapshot() == {"can0": {"Steering": {
        "frames": 4, "checked": 2, "short": 2, "counter_ok": 0, "counter_jumps": 0, "counter_repeats": 1,
        "counter_resyncs": 1, "checksum_ok": 1, "checksum_failures": 1, "checksum_not_checked": 0}}}


def test_a_dbc_without_transport_signals_gives_an_empty_checker(shared_data):
    loaded = load_dbc(shared_data / "dbc/css-electronics/canmod-gps.dbc")
    checker = TransportChecker.from_dbcs({"*": [loaded]}, lambda m, s: role_by_name(s))
    assert checker.empty and checker.describe() == {}
    checker.on_raw("can1", frame(0x1, bytes(8)))
    assert checker.snapshot() == {}


def test_a_wrong_explicit_algorithm_is_not_checked_and_an_unknown_one_is_refused(shared_data):
    database = load_dbc(shared_data / KONA / "pcan.patched_BS_BU.dbc").database
    steering = database.get_message_by_name("Steering")
    layout = layout_for(steering, ["Counter"], ["Checksum"], "toyota")  # 8-bit algorithm, 4-bit checksum
    assert layout.checksums[0][1] is None
    with pytest.raises(ValueError, match="unknown checksum algorithm 'crc99'; known: toyota, honda"):
        layout_for(steering, [], ["Checksum"], "crc99")
    with pytest.raises(ValueError, match="a 4-bit counter cannot wrap after 17"):
        layout_for(steering, ["Counter"], [], moduli={"Counter": 17})


# -- faults injected by the simulator, counted exactly --------------------------------------------------------


def kona_frames(shared_data: Path) -> list[tuple[str, can.Message]]:
    return list(LogSource(shared_data / KONA_2019))


def checked(checker: TransportChecker, frames) -> dict:
    for bus, msg in frames:
        checker.on_raw(bus, msg)
    return checker.snapshot()


def test_checksum_faults_are_counted_exactly_per_message(shared_data):
    proposals = kona_proposals(shared_data)
    checker, bus_dbcs = kona_checker(shared_data, proposals)
    layouts = layouts_from_dbcs(bus_dbcs, lambda m, s: proposals[(m, s)].role if (m, s) in proposals else DATA_ROLE,
                                lambda m, s: proposals[(m, s)].algorithm if (m, s) in proposals else None)
    transport = TransportFaults(layouts)
    frames = kona_frames(shared_data)
    injector = FaultInjector(parse_fault_spec("checksum=0.05,seed=7"), transport=transport)
    out = list(injector.apply(frames))
    snapshot = checked(checker, out)
    assert injector.report.checksum_corrupted == 410
    failures = {(bus, name): row["checksum_failures"] for bus, rows in snapshot.items() for name, row in rows.items()
                if row["checksum_failures"]}
    assert failures == {key: n["checksum"] for key, n in transport.injected.items() if n["checksum"]}
    assert sum(failures.values()) == checker.total()["checksum_failures"] == 410
    assert failures[("pcan", "Steering")] == 42 and ("pcan", "StabilityControl") not in failures  # not checked
    # Only the checksum changed: every other bit of every frame is the original's.
    changed = [(a, b) for (_, a), (_, b) in zip(frames, out) if bytes(a.data) != bytes(b.data)]
    assert len(changed) == 410 and len(out) == len(frames)
    assert checker.total()["counter_jumps"] == 3  # the log's own three


def test_counter_faults_make_exactly_one_jump_per_fault_and_counter(shared_data):
    proposals = kona_proposals(shared_data)
    clean, bus_dbcs = kona_checker(shared_data, proposals)
    faulted, _ = kona_checker(shared_data, proposals)
    layouts = layouts_from_dbcs(bus_dbcs, lambda m, s: proposals[(m, s)].role if (m, s) in proposals else DATA_ROLE,
                                lambda m, s: proposals[(m, s)].algorithm if (m, s) in proposals else None,
                                lambda m, s: proposals[(m, s)].modulus if (m, s) in proposals else None)
    transport = TransportFaults(layouts)
    frames = kona_frames(shared_data)
    injector = FaultInjector(parse_fault_spec("counter=0.02,seed=3"), transport=transport)
    before, after = checked(clean, frames), checked(faulted, list(injector.apply(frames)))
    assert injector.report.counter_skipped == sum(n["counter"] for n in transport.injected.values()) == 272
    for (bus, name), injected in transport.injected.items():
        row, base = after[bus][name], before[bus][name]
        assert row["counter_jumps"] == base["counter_jumps"] + injected["counter"], (bus, name)
        assert row["counter_repeats"] == 0 and row["checksum_failures"] == 0  # checksums were fixed up
        assert row["checksum_ok"] == base["checksum_ok"]
    # Every message here has one counter (IEB_386_WHEEL's is split in two signals but is one counter).
    assert faulted.total()["counter_jumps"] == clean.total()["counter_jumps"] + 272 == 3 + 272


def test_transport_faults_need_dbcs():
    with pytest.raises(FaultSpecError, match="need the messages' DBCs"):
        FaultInjector(parse_fault_spec("counter=0.1"))
    spec = parse_fault_spec("checksum=1%,counter=0.5,seed=2")
    assert (spec.checksum, spec.counter) == (0.01, 0.5)
    with pytest.raises(FaultSpecError, match=r"add up to 1\.5; at most 1"):
        parse_fault_spec("drop=0.5,checksum=0.5,counter=0.5")


def test_vehicle_sim_replay_faults_with_dbc_counted_by_the_checker(shared_data, capsys):
    pcan = shared_data / KONA / "pcan.patched_BS_BU.dbc"
    sinks = {bus: can.Bus(interface="virtual", channel=f"integrity-{bus}") for bus in ("pcan", "ccan")}
    try:
        code = sim_main(["replay", str(shared_data / KONA_2019), "--to", "virtual://", "--per-bus", "--speed", "max",
                         "--quiet", "--bus-map", "pcan=integrity-pcan,ccan=integrity-ccan",
                         "--faults", "checksum=0.02,seed=5", "--dbc", f"integrity-pcan={pcan}",
                         "--checksum", "Steering=nibble_xor", "--checksum", "VCU_109=nibble_sum"])
        got = {bus: [] for bus in sinks}
        for bus, sink in sinks.items():
            while (msg := sink.recv(0)) is not None:
                got[bus].append(msg)
    finally:
        for sink in sinks.values():
            sink.shutdown()
    assert code == 0
    summary = capsys.readouterr().out
    assert "faults: checksum_corrupted 44" in summary
    database = load_dbc(pcan).database
    checker = TransportChecker({("pcan", m.frame_id): (m, [], ["Checksum"], alg) for m, alg in (
        (database.get_message_by_name("Steering"), "nibble_xor"),
        (database.get_message_by_name("VCU_109"), "nibble_sum"))})
    for bus, frames in got.items():
        for msg in frames:
            checker.on_raw(bus, msg)
    snapshot = checker.snapshot()
    assert len(got["pcan"]) == 24263 and len(got["ccan"]) == 15283
    assert snapshot["pcan"]["Steering"]["checksum_failures"] + snapshot["pcan"]["VCU_109"]["checksum_failures"] == 44
    assert snapshot["pcan"]["Steering"]["checksum_ok"] + snapshot["pcan"]["Steering"]["checksum_failures"] == 863
    assert "ccan" not in snapshot  # the checker watches pcan only, and the DBC was bound to pcan only
