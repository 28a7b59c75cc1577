"""Diagnostic trouble codes: parse DTC responses, and follow what changes between readings.

Input is a reassembled ISO-TP payload (SDU), service id first, as ``agent.isotp.IsoTpReassembler``
returns it.  Supported responses:

* UDS ReadDTCInformation (ISO 14229-1 service 0x19), positive response 0x59, subfunctions 0x02
  reportDTCByStatusMask and 0x0A reportSupportedDTC:
  ``[0x59, subfunction, DTCStatusAvailabilityMask, (DTC_hi, DTC_mid, DTC_lo, status) ...]``.
  The status bit names are udsoncan's ``Dtc.Status`` flags, camel-cased as ISO 14229-1 writes them
  (``STATUS_BITS``).  Source kinds: ``uds19`` (0x02) and ``uds19_supported`` (0x0A: every DTC the ECU
  knows, a different list, so it is tracked apart).
* OBD-II (SAE J1979 / ISO 15031-5) modes 03 stored, 07 pending, 0A permanent, responses 0x43 / 0x47 /
  0x4A, in the CAN form of ISO 15765-4: ``[0x43, count, DTC_hi, DTC_lo, ...]``.  Source kinds
  ``obd03``, ``obd07``, ``obd0a``.

How codes are written (``code``):

* a 2-byte OBD DTC as SAE J2012 / ISO 15031-6 prints it: the top two bits pick the system letter
  (00 P powertrain, 01 C chassis, 10 B body, 11 U network), then four hex digits:
  0x0301 -> ``P0301``, 0xC123 -> ``U0123``;
* a 3-byte UDS DTC as its first two bytes in that form, a dash, then the failure type byte in hex
  (SAE J2012-DA): 0x030117 -> ``P0301-17``.  ``raw`` keeps the number.

Padding: DTC 0x0000 (OBD) and 0x000000 with status 0 (UDS) are fill, not codes, and are skipped.
A payload whose length does not fit its format raises ``DtcParseError`` naming the service and the byte
count; so does a service this module does not read (a negative response 0x7F included: ask
``is_dtc_response`` first to tell them apart).

``DtcTracker`` keeps the last reading per (bus, ECU response id, source kind) and turns each new reading
into change events (``DtcChange``): ``appeared``, ``cleared`` (no longer listed), ``status_changed``
(the UDS status byte differs).  An unchanged reading yields nothing; the first reading of a key reports
every present code as ``appeared``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

UDS_READ_DTC_RESPONSE = 0x59
REPORT_DTC_BY_STATUS_MASK = 0x02
REPORT_SUPPORTED_DTC = 0x0A
NEGATIVE_RESPONSE = 0x7F

# OBD response service -> source kind.
OBD_SOURCES = {0x43: "obd03", 0x47: "obd07", 0x4A: "obd0a"}
UDS_SOURCES = {REPORT_DTC_BY_STATUS_MASK: "uds19", REPORT_SUPPORTED_DTC: "uds19_supported"}
SOURCES = (*UDS_SOURCES.values(), *OBD_SOURCES.values())

# ISO 14229-1 status bits, low bit first, paired with udsoncan's Dtc.Status attribute of that bit.
STATUS_BITS: tuple[tuple[str, str], ...] = (
    ("testFailed", "test_failed"),
    ("testFailedThisOperationCycle", "test_failed_this_operation_cycle"),
    ("pending", "pending"),
    ("confirmed", "confirmed"),
    ("testNotCompletedSinceLastClear", "test_not_completed_since_last_clear"),
    ("testFailedSinceLastClear", "test_failed_since_last_clear"),
    ("testNotCompletedThisOperationCycle", "test_not_completed_this_operation_cycle"),
    ("warningIndicatorRequested", "warning_indicator_requested"),
)
SYSTEM_LETTERS = "PCBU"

APPEARED, CLEARED, STATUS_CHANGED = "appeared", "cleared", "status_changed"


class DtcParseError(ValueError):
    """A DTC response that does not fit its format (or is not a DTC response at all)."""


@dataclass(frozen=True, slots=True)
class DtcRecord:
    code: str  # "P0301" (OBD) or "P0301-17" (UDS, with the failure type byte)
    raw: int  # 0x0301 or 0x030117
    status: int | None = None  # the UDS status byte; None for OBD (modes 03/07/0A carry none)

    @property
    def status_bits(self) -> tuple[str, ...]:
        return status_bit_names(self.status)


@dataclass(frozen=True, slots=True)
class DtcReading:
    source: str  # one of SOURCES
    dtcs: tuple[DtcRecord, ...]
    availability_mask: int | None = None  # UDS DTCStatusAvailabilityMask: the status bits the ECU supports
    declared_count: int | None = None  # OBD: the count byte


def status_bit_names(status: int | None) -> tuple[str, ...]:
    """The names of the bits set in a UDS DTC status byte, low bit first (udsoncan decodes the byte)."""
    if status is None:
        return ()
    from udsoncan import Dtc  # at use: a service may never see a diagnostic frame

    flags = Dtc.Status.from_byte(status)
    return tuple(name for name, attribute in STATUS_BITS if getattr(flags, attribute))


def obd_dtc_code(value: int) -> str:
    """A 2-byte DTC as J2012 prints it: 0x0301 -> P0301, 0xC123 -> U0123."""
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"a 2-byte DTC is 0..0xFFFF, got 0x{value:X}")
    return f"{SYSTEM_LETTERS[value >> 14]}{(value >> 12) & 0x3:X}{value & 0xFFF:03X}"


def uds_dtc_code(value: int) -> str:
    """A 3-byte UDS DTC: the J2012 code of its top two bytes and the failure type byte, 0x030117 -> P0301-17."""
    if not 0 <= value <= 0xFFFFFF:
        raise ValueError(f"a 3-byte DTC is 0..0xFFFFFF, got 0x{value:X}")
    return f"{obd_dtc_code(value >> 8)}-{value & 0xFF:02X}"


def parse_obd_dtc_code(code: str) -> int:
    """The inverse of ``obd_dtc_code``: "P0301" -> 0x0301 (for scripts and tests that name codes)."""
    text = code.strip().upper()
    if len(text) != 5 or text[0] not in SYSTEM_LETTERS or text[1] not in "0123":
        raise ValueError(f"not a DTC like P0301: {code!r}")
    try:
        rest = int(text[2:], 16)
    except ValueError:
        raise ValueError(f"not a DTC like P0301: {code!r}") from None
    return (SYSTEM_LETTERS.index(text[0]) << 14) | (int(text[1]) << 12) | rest


def is_dtc_response(sdu: bytes) -> bool:
    """True for the responses ``parse_dtc_response`` reads (by service and subfunction; not checked further)."""
    if not sdu:
        return False
    if sdu[0] in OBD_SOURCES:
        return True
    return sdu[0] == UDS_READ_DTC_RESPONSE and len(sdu) > 1 and sdu[1] in UDS_SOURCES


def parse_dtc_response(sdu: bytes) -> DtcReading:
    """The DTCs of one response payload (service id first)."""
    sdu = bytes(sdu)
    if not sdu:
        raise DtcParseError("empty payload: no service id")
    sid = sdu[0]
    if sid in OBD_SOURCES:
        return parse_obd_dtcs(sdu)
    if sid == UDS_READ_DTC_RESPONSE:
        return parse_uds_dtcs(sdu)
    if sid == NEGATIVE_RESPONSE:
        rejected = f"0x{sdu[1]:02X}" if len(sdu) > 1 else "?"
        code = f"0x{sdu[2]:02X}" if len(sdu) > 2 else "?"
        raise DtcParseError(f"negative response (0x7F) to service {rejected}, response code {code}: no DTCs")
    raise DtcParseError(f"service 0x{sid:02X} is not a DTC response (0x59, 0x43, 0x47, 0x4A)")


def parse_obd_dtcs(sdu: bytes) -> DtcReading:
    """OBD-II mode 03/07/0A response on CAN: ``[service, count, hi, lo, ...]``."""
    sid = sdu[0]
    source = OBD_SOURCES[sid]
    if len(sdu) < 2:
        raise DtcParseError(f"service 0x{sid:02X} ({source}): {len(sdu)} byte(s), needs at least 2 (service, count)")
    count = sdu[1]
    body = sdu[2:]
    if len(body) % 2:
        raise DtcParseError(f"service 0x{sid:02X} ({source}): {len(sdu)} bytes, DTCs are 2 bytes each after "
                            f"service and count (odd byte left)")
    values = [(body[i] << 8) | body[i + 1] for i in range(0, len(body), 2)]
    if len(values) < count:
        raise DtcParseError(f"service 0x{sid:02X} ({source}): {len(sdu)} bytes hold {len(values)} DTC(s), "
                            f"the count byte says {count} (truncated)")
    if any(values[count:]):  # past the count only fill may follow
        raise DtcParseError(f"service 0x{sid:02X} ({source}): {len(sdu)} bytes hold {len(values)} DTC(s), "
                            f"the count byte says {count}")
    dtcs = tuple(DtcRecord(obd_dtc_code(v), v) for v in values[:count] if v)
    return DtcReading(source, _unique(dtcs), declared_count=count)


def parse_uds_dtcs(sdu: bytes) -> DtcReading:
    """UDS 0x59 0x02 / 0x0A: ``[0x59, subfunction, availability mask, (3-byte DTC, status) ...]``."""
    if len(sdu) < 2:
        raise DtcParseError(f"service 0x59: {len(sdu)} byte(s), needs a subfunction")
    subfunction = sdu[1]
    source = UDS_SOURCES.get(subfunction)
    if source is None:
        raise DtcParseError(f"service 0x59 subfunction 0x{subfunction:02X}: not read here "
                            f"(0x02 reportDTCByStatusMask, 0x0A reportSupportedDTC)")
    where = f"service 0x59 subfunction 0x{subfunction:02X} ({source})"
    if len(sdu) < 3:
        raise DtcParseError(f"{where}: {len(sdu)} bytes, needs at least 3 (with the status availability mask)")
    records = sdu[3:]
    if len(records) % 4:
        raise DtcParseError(f"{where}: {len(sdu)} bytes, records are 4 bytes each after 3 header bytes "
                            f"({len(records) % 4} byte(s) left over: truncated)")
    dtcs = []
    for i in range(0, len(records), 4):
        value = int.from_bytes(records[i:i + 3], "big")
        status = records[i + 3]
        if value == 0 and status == 0:
            continue
        dtcs.append(DtcRecord(uds_dtc_code(value), value, status))
    return DtcReading(source, _unique(tuple(dtcs)), availability_mask=sdu[2])


def _unique(dtcs: tuple[DtcRecord, ...]) -> tuple[DtcRecord, ...]:
    """One record per code (the last wins: an ECU listing a code twice is not two faults)."""
    return tuple({record.raw: record for record in dtcs}.values())


@dataclass(frozen=True, slots=True)
class DtcChange:
    time: float
    bus: str
    ecu: int  # the response id the reading came on
    source: str
    code: str
    change: str  # appeared | cleared | status_changed
    status: int | None  # the status now (None: OBD, or cleared)
    status_bits: tuple[str, ...] = ()
    previous_status: int | None = None  # status_changed and cleared: the status before
    raw: int = 0  # the DTC number (0x0301, 0x030117)

    def as_dict(self) -> dict:
        record = asdict(self)
        record["status_bits"] = list(self.status_bits)
        return record


TrackerKey = tuple[str, int, str]


class DtcTracker:
    """The last DTC list per (bus, ECU response id, source kind), and the changes each new reading brings."""

    def __init__(self) -> None:
        self._last: dict[TrackerKey, dict[int, DtcRecord]] = {}

    def current(self, bus: str, ecu: int, source: str) -> tuple[DtcRecord, ...]:
        return tuple(self._last.get((bus, ecu, source), {}).values())

    def keys(self) -> list[TrackerKey]:
        return sorted(self._last)

    def observe(self, time: float, bus: str, ecu: int, sdu: bytes) -> list[DtcChange]:
        """Parse a response payload (``DtcParseError`` on a bad one) and return what changed."""
        return self.update(time, bus, ecu, parse_dtc_response(sdu))

    def update(self, time: float, bus: str, ecu: int, reading: DtcReading) -> list[DtcChange]:
        key = (bus, ecu, reading.source)
        before = self._last.get(key, {})
        now = {record.raw: record for record in reading.dtcs}
        self._last[key] = now
        changes = []
        for raw, record in sorted(now.items()):
            old = before.get(raw)
            if old is None:
                changes.append(self._change(time, key, record, APPEARED, record.status, None))
            elif old.status != record.status:
                changes.append(self._change(time, key, record, STATUS_CHANGED, record.status, old.status))
        for raw, old in sorted(before.items()):
            if raw not in now:
                changes.append(self._change(time, key, old, CLEARED, None, old.status))
        return changes

    @staticmethod
    def _change(time: float, key: TrackerKey, record: DtcRecord, change: str, status: int | None,
                previous: int | None) -> DtcChange:
        bus, ecu, source = key
        return DtcChange(time, bus, ecu, source, record.code, change, status, status_bit_names(status), previous,
                         record.raw)
