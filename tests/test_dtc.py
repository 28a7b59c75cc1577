"""agent.diag.dtc: DTC responses (UDS 0x59 0x02 / 0x0A, OBD-II modes 03 / 07 / 0A) and the change tracker."""

from __future__ import annotations

import pytest
import udsoncan
from udsoncan.services import ReadDTCInformation

from agent.diag.dtc import (
    DtcParseError,
    DtcTracker,
    is_dtc_response,
    obd_dtc_code,
    parse_dtc_response,
    parse_obd_dtc_code,
    status_bit_names,
    uds_dtc_code,
)

pytestmark = pytest.mark.diag


@pytest.mark.parametrize(("value", "code"), [
    (0x0301, "P0301"), (0x0420, "P0420"), (0x1234, "P1234"), (0x3FFF, "P3FFF"), (0x4123, "C0123"),
    (0x8ABC, "B0ABC"), (0xC123, "U0123"), (0xD001, "U1001"), (0xF00D, "U300D"),
])
def test_two_byte_codes_are_written_as_j2012_does(value, code):
    assert obd_dtc_code(value) == code
    assert parse_obd_dtc_code(code) == value


def test_three_byte_codes_carry_the_failure_type_byte():
    assert uds_dtc_code(0x030117) == "P0301-17"
    assert uds_dtc_code(0xC12300) == "U0123-00"
    with pytest.raises(ValueError, match="3-byte"):
        uds_dtc_code(0x1000000)
    with pytest.raises(ValueError, match="not a DTC"):
        parse_obd_dtc_code("X0301")


def test_status_bits_by_name():
    assert status_bit_names(0x00) == ()
    assert status_bit_names(0x01) == ("testFailed",)
    assert status_bit_names(0x2F) == ("testFailed", "testFailedThisOperationCycle", "pending", "confirmed",
                                      "testFailedSinceLastClear")
    assert status_bit_names(0xD0) == ("testNotCompletedSinceLastClear", "testNotCompletedThisOperationCycle",
                                      "warningIndicatorRequested")
    assert status_bit_names(None) == ()


UDS_REPORT = bytes([0x59, 0x02, 0xFF,
                    0x03, 0x01, 0x17, 0x2F,   # P0301-17, failed now and confirmed
                    0xC1, 0x23, 0x00, 0x08,   # U0123-00, confirmed only
                    0x04, 0x20, 0x00, 0x04])  # P0420-00, pending


def test_uds_report_by_status_mask():
    reading = parse_dtc_response(UDS_REPORT)
    assert reading.source == "uds19" and reading.availability_mask == 0xFF
    assert [(d.code, d.raw, d.status) for d in reading.dtcs] == [
        ("P0301-17", 0x030117, 0x2F), ("U0123-00", 0xC12300, 0x08), ("P0420-00", 0x042000, 0x04)]
    assert reading.dtcs[1].status_bits == ("confirmed",)
    assert reading.dtcs[2].status_bits == ("pending",)


def test_uds_parsing_agrees_with_udsoncan():
    response = udsoncan.Response.from_payload(UDS_REPORT)
    ReadDTCInformation.interpret_response(response, subfunction=0x02)
    theirs = [(dtc.id, dtc.status.get_byte_as_int()) for dtc in response.service_data.dtcs]
    assert theirs == [(d.raw, d.status) for d in parse_dtc_response(UDS_REPORT).dtcs]


def test_uds_supported_dtcs_and_empty_report():
    reading = parse_dtc_response(bytes([0x59, 0x0A, 0x7F, 0x03, 0x01, 0x17, 0x00]))
    assert reading.source == "uds19_supported" and reading.availability_mask == 0x7F
    assert [(d.code, d.status) for d in reading.dtcs] == [("P0301-17", 0)]
    assert parse_dtc_response(bytes([0x59, 0x02, 0xFF])).dtcs == ()


def test_uds_zero_records_are_padding():
    reading = parse_dtc_response(UDS_REPORT[:7] + bytes(8))
    assert [d.code for d in reading.dtcs] == ["P0301-17"]


@pytest.mark.parametrize(("payload", "message"), [
    (UDS_REPORT[:-1], r"service 0x59 subfunction 0x02 \(uds19\): 14 bytes, .*3 byte\(s\) left over: truncated"),
    (bytes([0x59, 0x02]), r"service 0x59 subfunction 0x02 \(uds19\): 2 bytes, needs at least 3"),
    (bytes([0x59]), r"service 0x59: 1 byte\(s\), needs a subfunction"),
    (bytes([0x59, 0x04, 0xFF]), r"subfunction 0x04: not read here"),
    (bytes([0x43, 0x02, 0x03, 0x01]), r"service 0x43 \(obd03\): 4 bytes hold 1 DTC\(s\), the count byte says 2 "
                                      r"\(truncated\)"),
    (bytes([0x47, 0x01, 0x03, 0x01, 0x04]), r"service 0x47 \(obd07\): 5 bytes, .*odd byte left"),
    (bytes([0x4A]), r"service 0x4A \(obd0a\): 1 byte\(s\), needs at least 2"),
    (bytes([0x43, 0x01, 0x03, 0x01, 0x04, 0x20]), r"service 0x43 \(obd03\): 6 bytes hold 2 DTC\(s\), the count byte "
                                                  r"says 1$"),
    (bytes([0x7F, 0x19, 0x31]), r"negative response \(0x7F\) to service 0x19, response code 0x31"),
    (bytes([0x41, 0x0D, 0x3C]), r"service 0x41 is not a DTC response"),
    (b"", r"empty payload"),
])
def test_bad_payloads_are_named(payload, message):
    with pytest.raises(DtcParseError, match=message):
        parse_dtc_response(payload)


@pytest.mark.parametrize(("sid", "source"), [(0x43, "obd03"), (0x47, "obd07"), (0x4A, "obd0a")])
def test_obd_lists(sid, source):
    reading = parse_dtc_response(bytes([sid, 0x03, 0x03, 0x01, 0xC1, 0x23, 0x44, 0x20]))
    assert reading.source == source and reading.declared_count == 3
    assert [(d.code, d.status, d.status_bits) for d in reading.dtcs] == [
        ("P0301", None, ()), ("U0123", None, ()), ("C0420", None, ())]


def test_obd_padding_and_empty_lists():
    assert parse_dtc_response(bytes([0x43, 0x00])).dtcs == ()
    # fill after the counted DTCs, and 0x0000 among them, are not codes
    assert [d.code for d in parse_dtc_response(bytes([0x43, 0x01, 0x03, 0x01, 0x00, 0x00])).dtcs] == ["P0301"]
    assert [d.code for d in parse_dtc_response(bytes([0x47, 0x02, 0x00, 0x00, 0x04, 0x20])).dtcs] == ["P0420"]


def test_is_dtc_response():
    assert is_dtc_response(UDS_REPORT) and is_dtc_response(bytes([0x4A, 0x00]))
    assert not is_dtc_response(bytes([0x7F, 0x19, 0x31]))
    assert not is_dtc_response(bytes([0x59, 0x06])) and not is_dtc_response(b"")


def uds(*records: tuple[int, int]) -> bytes:
    return bytes([0x59, 0x02, 0xFF]) + b"".join(dtc.to_bytes(3, "big") + bytes([status]) for dtc, status in records)


def test_tracker_reports_appeared_status_changed_cleared_and_nothing_on_no_change():
    tracker = DtcTracker()
    first = tracker.observe(10.0, "obd", 0x7E8, uds((0x030117, 0x2F), (0xC12300, 0x08)))
    assert [(c.code, c.change, c.status, c.status_bits) for c in first] == [
        ("P0301-17", "appeared", 0x2F, ("testFailed", "testFailedThisOperationCycle", "pending", "confirmed",
                                        "testFailedSinceLastClear")),
        ("U0123-00", "appeared", 0x08, ("confirmed",))]
    assert tracker.observe(11.0, "obd", 0x7E8, uds((0xC12300, 0x08), (0x030117, 0x2F))) == []
    changed = tracker.observe(12.0, "obd", 0x7E8, uds((0x030117, 0x28), (0xC12300, 0x08)))
    assert [c.as_dict() for c in changed] == [{
        "time": 12.0, "bus": "obd", "ecu": 0x7E8, "source": "uds19", "code": "P0301-17", "change": "status_changed",
        "status": 0x28, "status_bits": ["confirmed", "testFailedSinceLastClear"], "previous_status": 0x2F,
        "raw": 0x030117}]
    gone = tracker.observe(13.0, "obd", 0x7E8, uds((0x030117, 0x28)))
    assert [(c.code, c.change, c.status, c.previous_status) for c in gone] == [("U0123-00", "cleared", None, 0x08)]
    assert [d.code for d in tracker.current("obd", 0x7E8, "uds19")] == ["P0301-17"]


def test_tracker_keys_are_bus_ecu_and_source():
    tracker = DtcTracker()
    stored = bytes([0x43, 0x01, 0x03, 0x01])
    assert [c.change for c in tracker.observe(1.0, "obd", 0x7E8, stored)] == ["appeared"]
    # the same code from another ECU, another list or another bus is news of its own
    assert [(c.ecu, c.source) for c in tracker.observe(1.0, "obd", 0x7E9, stored)] == [(0x7E9, "obd03")]
    assert [c.source for c in tracker.observe(1.0, "obd", 0x7E8, bytes([0x47, 0x01, 0x03, 0x01]))] == ["obd07"]
    assert [c.bus for c in tracker.observe(1.0, "body", 0x7E8, stored)] == ["body"]
    assert tracker.observe(2.0, "obd", 0x7E8, stored) == []
    cleared = tracker.observe(3.0, "obd", 0x7E8, bytes([0x43, 0x00]))
    assert [(c.code, c.change, c.status, c.status_bits) for c in cleared] == [("P0301", "cleared", None, ())]
    assert tracker.keys() == [("body", 0x7E8, "obd03"), ("obd", 0x7E8, "obd03"), ("obd", 0x7E8, "obd07"),
                              ("obd", 0x7E9, "obd03")]


def test_a_bad_payload_leaves_the_tracker_as_it_was():
    tracker = DtcTracker()
    tracker.observe(1.0, "obd", 0x7E8, bytes([0x43, 0x01, 0x03, 0x01]))
    with pytest.raises(DtcParseError):
        tracker.observe(2.0, "obd", 0x7E8, bytes([0x43, 0x02, 0x03]))
    assert [d.code for d in tracker.current("obd", 0x7E8, "obd03")] == ["P0301"]
