"""What the agent may ask on a bus: OBD-II and UDS request specs, their CAN ids and payloads.

Requests (``RequestSpec``), 11-bit ISO 15765-4 addressing only:

* ``obd01`` (PIDs), ``obd03`` / ``obd07`` / ``obd0a`` (stored / pending / permanent DTCs) go by default
  to the functional id 0x7DF and are answered on 0x7E8-0x7EF; ``uds19`` (ReadDTCInformation 0x19 0x02
  reportDTCByStatusMask, with ``status_mask``) goes by default to the physical id 0x7E0, answered on
  0x7E8 (a physical id 0x7E0+n is answered on 0x7E8+n unless ``response_ids`` say otherwise).
* Mode 01 takes at most 6 PIDs per request (SAE J1979): longer lists are sent as several requests.
* Every request is one single frame ``[length, service, ...]`` padded to 8 bytes with 0xCC (the fill
  ISO 15765-2 recommends; ``padding`` changes it), as ISO 15765-4 wants every frame 8 bytes long.

Buses: ``writable_problem`` is the one rule for which bus a request may go on, used by the config's check
(with file:line) and by the scheduler before every send.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass

OBD_FUNCTIONAL_ID = 0x7DF
OBD_RESPONSE_IDS = tuple(range(0x7E8, 0x7F0))
UDS_DEFAULT_REQUEST_ID = 0x7E0
PHYSICAL_TO_RESPONSE = 8  # ISO 15765-4: ECU n takes 0x7E0+n and answers on 0x7E8+n
MAX_PIDS_PER_REQUEST = 6
POSITIVE_OFFSET = 0x40
REPORT_DTC_BY_STATUS_MASK = 0x02

# request kind -> service id
KINDS = {"obd01": 0x01, "obd03": 0x03, "obd07": 0x07, "obd0a": 0x0A, "uds19": 0x19}
OBD_KINDS = frozenset({"obd01", "obd03", "obd07", "obd0a"})

# SAE J1979 mode 01: data bytes per PID (PIDs 0x00-0x60), to cut multi-PID answers apart.
MODE01_DATA_BYTES: dict[int, int] = {
    **dict.fromkeys((0x00, 0x01, 0x20, 0x40, 0x41, 0x4F, 0x50, 0x60), 4),
    **dict.fromkeys(range(0x24, 0x2C), 4), **dict.fromkeys(range(0x34, 0x3C), 4),
    **dict.fromkeys((0x02, 0x03, 0x0C, 0x10, 0x1F, 0x21, 0x22, 0x23, 0x31, 0x32, 0x42, 0x43, 0x44, 0x4D, 0x4E,
                     0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5D, 0x5E), 2),
    **dict.fromkeys(range(0x14, 0x1C), 2), **dict.fromkeys(range(0x3C, 0x40), 2),
    **dict.fromkeys((0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0D, 0x0E, 0x0F, 0x11, 0x12, 0x13, 0x1C,
                     0x1D, 0x1E, 0x2C, 0x2D, 0x2E, 0x2F, 0x30, 0x33, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4A, 0x4B,
                     0x4C, 0x51, 0x52, 0x5A, 0x5B, 0x5C, 0x5F), 1),
}


def split_mode01_response(sdu: bytes) -> list[bytes]:
    """A mode 01 answer with several PIDs, ``[0x41, pid, data.., pid, data..]``, as one ``[0x41, pid, data..]``
    per PID (what a DBC message describes).  Stops at a PID whose length J1979 does not fix here or whose
    data is cut short: what follows it cannot be delimited."""
    if not sdu or sdu[0] != KINDS["obd01"] + POSITIVE_OFFSET:
        return []
    parts, i = [], 1
    while i < len(sdu):
        size = MODE01_DATA_BYTES.get(sdu[i])
        if size is None or i + 1 + size > len(sdu):
            break
        parts.append(bytes([sdu[0]]) + bytes(sdu[i:i + 1 + size]))
        i += 1 + size
    return parts


class NotWritableError(ValueError):
    """A request for a bus the agent must not write to."""


def writable_problem(spec: RequestSpec, writable: Set[str], field: str = "buses[].transmit") -> str | None:
    """Why ``spec`` may not be sent (its bus is not in ``writable``), or None: the one rule, for the
    config's check (with file:line) and the scheduler's own."""
    if spec.bus in writable:
        return None
    return (f"bus {spec.bus!r} is not writable, and a {spec.kind} request sends frames: set {field}: true on "
            f"bus {spec.bus!r} to allow it, or drop the request")


@dataclass(frozen=True)
class RequestSpec:
    bus: str
    kind: str  # one of KINDS
    period_s: float
    pids: tuple[int, ...] = ()  # obd01 only
    status_mask: int = 0xFF  # uds19 only: DTCStatusMask
    request_id: int | None = None  # None: 0x7DF for OBD, 0x7E0 for UDS
    response_ids: tuple[int, ...] = ()  # empty: see the module doc
    name: str = ""  # counters key; empty: "bus:kind" (made unique by the scheduler)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r}: one of {', '.join(KINDS)}")
        if not self.period_s > 0:
            raise ValueError(f"period_s must be > 0, got {self.period_s!r}")
        if self.kind == "obd01":
            if not self.pids:
                raise ValueError("obd01 needs pids (a list of mode 01 PIDs)")
            if any(not 0 <= pid <= 0xFF for pid in self.pids) or len(set(self.pids)) != len(self.pids):
                raise ValueError(f"pids must be distinct numbers 0x00-0xFF, got {list(self.pids)}")
        elif self.pids:
            raise ValueError(f"pids are for obd01, not {self.kind}")
        if not 0 <= self.status_mask <= 0xFF:
            raise ValueError(f"status_mask must be 0x00-0xFF, got {self.status_mask!r}")
        for can_id in (*(() if self.request_id is None else (self.request_id,)), *self.response_ids):
            if not 0 <= can_id <= 0x7FF:
                raise ValueError(f"ids are 11-bit (0x000-0x7FF), got 0x{can_id:X}")

    @property
    def resolved_request_id(self) -> int:
        if self.request_id is not None:
            return self.request_id
        return OBD_FUNCTIONAL_ID if self.kind in OBD_KINDS else UDS_DEFAULT_REQUEST_ID

    @property
    def functional(self) -> bool:
        return self.resolved_request_id == OBD_FUNCTIONAL_ID

    @property
    def resolved_response_ids(self) -> tuple[int, ...]:
        if self.response_ids:
            return self.response_ids
        if self.functional:
            return OBD_RESPONSE_IDS
        return (self.resolved_request_id + PHYSICAL_TO_RESPONSE,)

    def payloads(self) -> list[bytes]:
        """The request SDUs (service first): one, or one per 6 PIDs for obd01."""
        service = KINDS[self.kind]
        if self.kind == "obd01":
            return [bytes([service, *self.pids[i:i + MAX_PIDS_PER_REQUEST]])
                    for i in range(0, len(self.pids), MAX_PIDS_PER_REQUEST)]
        if self.kind == "uds19":
            return [bytes([service, REPORT_DTC_BY_STATUS_MASK, self.status_mask])]
        return [bytes([service])]


SPEC_KEYS = ("bus", "kind", "period_s", "pids", "status_mask", "request_id", "response_ids", "name")


def spec_from_config(item: Mapping, where: str = "diagnostics.requests[0]") -> RequestSpec:
    """A ``RequestSpec`` from a config mapping; errors name ``where`` and the key."""
    if not isinstance(item, Mapping):
        raise ValueError(f"{where}: expected a mapping with bus, kind, period_s")
    unknown = sorted(set(item) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key (known keys: {', '.join(SPEC_KEYS)})")
    for key in ("bus", "kind", "period_s"):
        if key not in item:
            raise ValueError(f"{where}.{key}: required")
    try:
        return RequestSpec(bus=str(item["bus"]), kind=str(item["kind"]), period_s=float(item["period_s"]),
                           pids=tuple(int(p) for p in item.get("pids") or ()),
                           status_mask=int(item.get("status_mask", 0xFF)),
                           request_id=None if item.get("request_id") is None else int(item["request_id"]),
                           response_ids=tuple(int(r) for r in item.get("response_ids") or ()),
                           name=str(item.get("name") or ""))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None
