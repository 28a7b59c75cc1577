"""Decode stage for DBC messages carried by ISO-TP (diagnostic responses longer than a CAN frame).

A DBC such as CSS Electronics' ``tp_uds_nissan.dbc`` describes the *reassembled*
response of a diagnostic id (0x7BB, 55 bytes, multiplexed on the service and the
local identifier).  The raw 8-byte frames of that id mean nothing to it.
``TransportDecoder`` wraps the project's ``Decoder``: frames of such ids go through
``IsoTpReassembler`` (agent.isotp), each completed transfer is classified with
udsoncan (a negative response, service 0x7F, is counted, not decoded) and decoded by
cantools (``Message.decode(decode_choices=False, scaling=False, allow_truncated=True)``)
into the same ``DecodedFrame`` every other frame becomes, so collect -> consent -> batch
need no change.  Every other frame goes to the wrapped ``Decoder`` unchanged (a frame on
a request id is also shown to the reassembler, which counts flow control frames).

Which ids: per bus, the DBC messages longer than 8 bytes on a classic-CAN 11-bit id
(not CAN FD, not J1939, whose own transport protocol is another matter), plus ids
listed explicitly (``ids``; with ``EXTENDED_FLAG`` set for a 29-bit id).

Payload layout (``sdu_offset``): CSS Electronics' TP DBCs, the only ones we have,
number the bytes the way their MultiFrameDecoder builds the payload: the first
frame's data from byte 1 on, so byte 0 is the low byte of the length and the UDS
service id is byte 1 (a single frame keeps its PCI byte, which is the length as
well).  ``sdu_offset=1`` (the default) rebuilds that: ``bytes([len & 0xFF]) + SDU``.
A DBC whose byte 0 is the service id wants ``sdu_offset=0``.  The padding is
stripped (per the ISO-TP length), so a DBC longer than the transfer (this one says
55 bytes for 54) still decodes: signals past the end are left out, never invented.

Counters: the wrapped decoder's ``counters`` count the frames it saw (transport
frames do not reach it, so its per-bus sums stay exact); ``transport[bus]`` counts the
transport frames and what became of each transfer, ``isotp(bus)`` the reassembly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import can

from agent.dbc import LoadedDbc
from agent.decode import ALL_DBCS, EXTENDED_FLAG, Decoder
from agent.diag.request_spec import OBD_RESPONSE_IDS, split_mode01_response
from agent.model import DecodedFrame

if TYPE_CHECKING:  # the ISO-TP stack itself is imported where it is used
    from agent.isotp import IsoTpCounters, IsoTpReassembler

NEGATIVE_RESPONSE_SID = 0x7F  # ISO 14229-1: negative response service id (udsoncan.Response checks it too)
CLASSIC_CAN_BYTES = 8


@dataclass(slots=True)
class TransportCounters:
    """Per bus.  Every completed transfer lands in exactly one of decoded / negative /
    not_in_dbc / filtered / decode_errors."""

    frames: int = 0  # frames of transport ids (taken off the plain decode path)
    transfers: int = 0
    decoded: int = 0
    negative: int = 0  # UDS negative responses (0x7F): counted, not decoded
    not_in_dbc: int = 0
    filtered: int = 0
    decode_errors: int = 0
    services: dict[int, int] = field(default_factory=dict)  # response service id -> transfers
    negative_codes: dict[str, int] = field(default_factory=dict)  # udsoncan NRC name -> count

    def as_dict(self) -> dict:
        return {name: (dict(getattr(self, name)) if isinstance(getattr(self, name), dict) else getattr(self, name))
                for name in self.__slots__}


# 11-bit diagnostic ids (ISO 15765-4 uses 0x7DF and 0x7E0-0x7EF; carmakers' ECUs answer in 0x700-0x7FF).  A
# long DBC message elsewhere is an ordinary message a DBC declares longer than the bus carries (the Kona
# P-CAN DBC's 64-byte FATC_5F5 on a classic bus): taking its frames for ISO-TP would invent values.
DIAGNOSTIC_IDS = range(0x700, 0x800)
# ISO 15765-4 (OBD-II on CAN): ECU n answers on 0x7E8+n, always through ISO-TP, whatever length its DBC message
# says (the shipped OBD2 DBC describes the 8-byte single frame; a DTC list or several PIDs take more frames).


def transport_ids(dbcs: Iterable[LoadedDbc]) -> set[int]:
    """Ids of messages only ISO-TP can carry: > 8 bytes, classic CAN, 11-bit, in the diagnostic range (other
    ids only when listed explicitly)."""
    ids: set[int] = set()
    for loaded in dbcs:
        for message in loaded.database.messages:
            if message.is_fd or message.is_extended_frame or message.protocol == "j1939":
                continue
            if message.frame_id in OBD_RESPONSE_IDS or (message.length > CLASSIC_CAN_BYTES
                                                        and message.frame_id in DIAGNOSTIC_IDS):
                ids.add(message.frame_id)
    return ids


def service_name(sid: int) -> str | None:
    """The UDS service a response service id answers (udsoncan's class name), None when udsoncan has none."""
    from udsoncan.BaseService import BaseService  # at use: a service may never see a diagnostic frame

    service = BaseService.from_response_id(sid) if sid != NEGATIVE_RESPONSE_SID else None
    return service.get_name() if service is not None else None


class TransportDecoder:
    """A ``Decoder`` look-alike that reassembles ISO-TP transfers of ``ids`` before decoding them."""

    def __init__(self, decoder: Decoder, bus_dbcs: Mapping[str, list[LoadedDbc]], ids: Iterable[int] = (),
                 request_ids: Mapping[int, int] | None = None, sdu_offset: int = 1) -> None:
        if sdu_offset not in (0, 1):
            raise ValueError("sdu_offset is 0 (DBC byte 0 = service id) or 1 (CSS layout)")
        self.decoder = decoder
        self._bus_dbcs = bus_dbcs
        self._explicit = set(ids)
        self._request_ids = dict(request_ids or {})
        self._sdu_offset = sdu_offset
        self._buses: dict[str, tuple[set[int], IsoTpReassembler] | None] = {}
        self.transport: dict[str, TransportCounters] = {}
        # Called with (bus, response id, time, SDU) for every completed positive transfer (the DTC tracker).
        self.transfer_listeners: list[Callable[[str, int, float, bytes], None]] = []

    # -- the Decoder surface the pipeline and the CLI use -------------------------------
    @property
    def specs(self):
        return self.decoder.specs

    @property
    def wanted(self):
        return self.decoder.wanted

    @property
    def counters(self):
        return self.decoder.counters

    @counters.setter
    def counters(self, value) -> None:  # a reload hands counters over (agent.flow.handover)
        self.decoder.counters = value

    @property
    def message_counts(self):
        return self.decoder.message_counts

    @message_counts.setter
    def message_counts(self, value) -> None:
        self.decoder.message_counts = value

    def routes(self, bus: str):
        return self.decoder.routes(bus)

    def physical(self, frame: DecodedFrame) -> dict[str, int | float]:
        return self.decoder.physical(frame)

    def total(self):
        """The wrapped decoder's totals with the transport frames in ``frames`` and each decoded transfer
        (a message reassembled from several frames) counted once in ``decoded``."""
        total = self.decoder.total()
        for counters in self.transport.values():
            total.frames += counters.frames
            total.decoded += counters.decoded
            total.decode_errors += counters.decode_errors
        return total

    # -- transport -----------------------------------------------------------------
    def isotp(self, bus: str) -> dict[int, IsoTpCounters]:
        """Reassembly counters of a bus, per response id (empty before its first frame)."""
        entry = self._buses.get(bus)
        return entry[1].counters if entry else {}

    def snapshot(self) -> dict:
        """Transport counters per bus, with the reassembly counters per id (hex)."""
        return {bus: {**counters.as_dict(),
                      "isotp": {f"0x{rid:X}": c.as_dict() for rid, c in sorted(self.isotp(bus).items())}}
                for bus, counters in sorted(self.transport.items())}

    def expire(self, now: float) -> int:
        """Drop transfers left open past N_Cr on every bus (counted as timeouts)."""
        return sum(entry[1].expire(now) for entry in self._buses.values() if entry)

    def _build(self, bus: str):
        dbcs = [*self._bus_dbcs.get(ALL_DBCS, []), *self._bus_dbcs.get(bus, [])]
        ids = transport_ids(dbcs) | self._explicit
        entry = None
        if ids:
            requests = {req: resp for req, resp in self._request_ids.items() if resp in ids}
            from agent.isotp import IsoTpReassembler  # at use: a bus may carry no ISO-TP

            entry = (ids, IsoTpReassembler(ids, requests))
            self.transport.setdefault(bus, TransportCounters())
        self._buses[bus] = entry
        return entry

    def decode(self, msg: can.Message, bus: str) -> DecodedFrame | None:
        entry = self._buses.get(bus, False)
        if entry is False:
            entry = self._build(bus)
        if entry is None or msg.is_error_frame or msg.is_remote_frame:
            return self.decoder.decode(msg, bus)
        ids, reassembler = entry
        frame_id = msg.arbitration_id
        key = frame_id | EXTENDED_FLAG if msg.is_extended_id else frame_id
        if key not in ids:
            if reassembler.wants(key):  # a request id: its flow control frames are counted
                reassembler.feed(msg.timestamp, key, bytes(msg.data), msg.is_fd, msg.is_extended_id)
            return self.decoder.decode(msg, bus)
        self.transport[bus].frames += 1
        done = reassembler.feed(msg.timestamp, key, bytes(msg.data), msg.is_fd, msg.is_extended_id)
        if done is None:
            return None
        return self._decode_transfer(bus, key, done[0], done[2])

    def decode_block(self, msgs: list[can.Message], bus: str) -> list[DecodedFrame | None]:
        """``decode`` of each frame of one bus: the wrapped decoder's block path when the bus has no transport
        ids, else frame by frame (a transfer spans frames)."""
        entry = self._buses.get(bus, False)
        if entry is False:
            entry = self._build(bus)
        if entry is None:
            return self.decoder.decode_block(msgs, bus)
        decode = self.decode
        return [decode(msg, bus) for msg in msgs]

    def _decode_transfer(self, bus: str, key: int, timestamp: float, payload: bytes) -> DecodedFrame | None:
        counters = self.transport[bus]
        counters.transfers += 1
        if not payload:
            counters.decode_errors += 1
            return None
        sid = payload[0]
        counters.services[sid] = counters.services.get(sid, 0) + 1
        if sid == NEGATIVE_RESPONSE_SID:
            counters.negative += 1
            import udsoncan
            from udsoncan.ResponseCode import ResponseCode

            response = udsoncan.Response.from_payload(payload)
            code = response.code if response.valid else (payload[2] if len(payload) > 2 else None)
            name = ResponseCode.get_name(code) if code is not None else "truncated"
            counters.negative_codes[name] = counters.negative_codes.get(name, 0) + 1
            return None
        for listener in self.transfer_listeners:
            listener(bus, key & ~EXTENDED_FLAG, timestamp, payload)
        route = self.decoder.routes(bus).get(key)
        if route is None:
            if key in self.decoder.routes(bus):
                counters.filtered += 1
            else:
                counters.not_in_dbc += 1
            return None
        # A mode 01 answer to several PIDs holds one DBC message per PID: decode each, keep the signals of all.
        parts = split_mode01_response(payload)  # [] unless a mode 01 answer
        raw = {}
        try:
            for part in parts if len(parts) > 1 else [payload]:
                raw.update(route.message.decode(self.dbc_payload(part), decode_choices=False, scaling=False,
                                                allow_truncated=True))
        except Exception:  # cantools raises DecodeError and friends: count, never fail
            counters.decode_errors += 1
            return None
        if route.wanted is not None:
            raw = {name: value for name, value in raw.items() if name in route.wanted}
        if not raw:
            counters.filtered += 1
            return None
        counters.decoded += 1
        name = route.message.name
        count_key = (bus, name)
        self.decoder.message_counts[count_key] = self.decoder.message_counts.get(count_key, 0) + 1
        return DecodedFrame(timestamp, bus, key & ~EXTENDED_FLAG, name, raw)

    def dbc_payload(self, sdu: bytes) -> bytes:
        """The bytes as the DBC numbers them (see ``sdu_offset`` in the module doc)."""
        return bytes([len(sdu) & 0xFF]) + sdu if self._sdu_offset else sdu


def wrap_for_transport(decoder: Decoder, dbcs: Mapping[str, list[LoadedDbc]] | Iterable[LoadedDbc] | None = None,
                       *, ids: Iterable[int] = (), request_ids: Mapping[int, int] | None = None,
                       sdu_offset: int = 1) -> Decoder | TransportDecoder:
    """``decoder`` itself when no DBC message needs ISO-TP (and no ``ids`` are given), else a
    ``TransportDecoder`` around it.  ``dbcs`` is the decoder's bus -> DBCs map (a plain list applies
    to every bus; None: the decoder's own)."""
    if dbcs is None:
        bus_dbcs: Mapping[str, list[LoadedDbc]] = decoder._bus_dbcs
    elif isinstance(dbcs, Mapping):
        bus_dbcs = dbcs
    else:
        bus_dbcs = {ALL_DBCS: list(dbcs)}
    ids = set(ids)
    if not ids and not any(transport_ids(loaded) for loaded in bus_dbcs.values()):
        return decoder
    return TransportDecoder(decoder, bus_dbcs, ids, request_ids, sdu_offset)


def transport_snapshot(decoder: object) -> dict:
    """ISO-TP and diagnostic-answer counters per bus (empty when no bus has transport ids)."""
    return decoder.snapshot() if isinstance(decoder, TransportDecoder) else {}
