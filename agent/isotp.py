"""Passive ISO-TP (ISO 15765-2) reassembly: a sniffer's view of segmented transfers.

Diagnostic responses (UDS, KWP) longer than one CAN frame travel as a first
frame (FF) and consecutive frames (CF); the receiver paces them with flow
control frames (FC) sent on the *other* id.  A logger or the agent sees both
directions and sends nothing, so ``IsoTpReassembler`` only listens: it parses
every frame of the configured response ids with can-isotp's own PDU parser
(``isotp.protocol.PDU``: SF with 4-bit or escape length incl. CAN FD, FF with
12-bit or 32-bit escape length, CF, FC) and stitches the payloads together.

What it checks (and counts per response id, ``IsoTpCounters``):

* CF sequence numbers run 1..15, 0, 1 ... after the FF (which is number 0); a
  CF with another number drops the transfer (``out_of_order``); CFs of a
  dropped transfer, or with no transfer open, are ``stray_cf``;
* a new FF or SF before the open transfer completed: ``missing`` (the open
  one is dropped, the new one starts);
* more than ``N_CR_S`` (1 s) since the transfer's previous frame: ``timeouts``
  (dropped; ``expire(now)`` also drops transfers left open);
* bytes past the declared length (padding, usually 0x55/0xAA/0xCC/0xFF) are
  stripped and counted in ``padding_bytes``;
* FC frames are ignored but counted (``flow_control_seen``), on the response
  id itself or on its request id.  Request ids are given (``request_ids``) or
  learnt: the first FC-shaped frame of another id while a transfer waits for
  its first CF is taken as that transfer's flow control, and its id remembered.

``feed`` returns ``(timestamp_of_last_frame, arbitration_id, payload)`` for a
completed transfer, else None.  The payload is the ISO-TP SDU: for UDS, the
service byte first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from isotp.can_message import CanMessage
from isotp.protocol import PDU

# N_Cr (ISO 15765-2): the longest a receiver waits for the next consecutive frame.
N_CR_S = 1.0
# A transfer longer than this is refused (a 32-bit FF length can claim 4 GiB; UDS never needs more).
MAX_TRANSFER_BYTES = 1 << 20

Transfer = tuple[float, int, bytes]


@dataclass(slots=True)
class IsoTpCounters:
    """Per response id.  ``completed == single + multi``."""

    frames: int = 0  # frames of the response id fed in (FC on the request id not included)
    completed: int = 0
    single: int = 0
    multi: int = 0
    flow_control_seen: int = 0
    out_of_order: int = 0
    missing: int = 0
    timeouts: int = 0
    stray_cf: int = 0
    invalid: int = 0  # frames can-isotp's parser refuses (unknown type, bad length, ...), or too long a transfer
    padding_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(slots=True)
class _Open:
    length: int
    data: bytearray
    next_seq: int
    last: float
    got_cf: bool = False


class IsoTpReassembler:
    """Reassembles ISO-TP transfers of ``response_ids`` from frames fed in time order.

    ``request_ids`` maps request id -> response id (the direction whose FCs pace that
    response); unknown ones are learnt when ``learn_requests`` (see the module doc).
    """

    def __init__(self, response_ids: Iterable[int], request_ids: Mapping[int, int] | None = None,
                 learn_requests: bool = True, n_cr_s: float = N_CR_S) -> None:
        self.counters: dict[int, IsoTpCounters] = {rid: IsoTpCounters() for rid in response_ids}
        self.request_ids: dict[int, int] = dict(request_ids or {})
        self._learn = learn_requests
        self._n_cr = n_cr_s
        self._open: dict[int, _Open] = {}
        self._awaiting_fc: set[int] = set()  # response ids with an FF and no CF yet

    def wants(self, arbitration_id: int) -> bool:
        """True for frames this reassembler reads (response ids, known request ids, a possible FC)."""
        return arbitration_id in self.counters or arbitration_id in self.request_ids or bool(self._awaiting_fc)

    # -- feeding -------------------------------------------------------------------
    def feed(self, timestamp: float, arbitration_id: int, data: bytes, is_fd: bool = False,
             is_extended_id: bool = False) -> Transfer | None:
        counters = self.counters.get(arbitration_id)
        if counters is None:
            self._other(arbitration_id, data)
            return None
        counters.frames += 1
        try:
            pdu = PDU(CanMessage(arbitration_id, len(data), bytes(data), is_extended_id, is_fd))
        except ValueError:
            counters.invalid += 1
            return None
        kind = pdu.type
        if kind == PDU.Type.FLOW_CONTROL:
            counters.flow_control_seen += 1
            return None
        current = self._open.get(arbitration_id)
        if current is not None and timestamp - current.last > self._n_cr:
            counters.timeouts += 1
            self._drop(arbitration_id)
            current = None
        if kind == PDU.Type.CONSECUTIVE_FRAME:
            return self._consecutive(timestamp, arbitration_id, pdu, current, counters)
        if current is not None:  # an SF or FF while a transfer is open: its missing CFs never came
            counters.missing += 1
            self._drop(arbitration_id)
        length = pdu.length or 0
        if kind == PDU.Type.SINGLE_FRAME:
            header = 2 if pdu.escape_sequence else 1
            counters.padding_bytes += len(data) - header - length
            counters.completed += 1
            counters.single += 1
            return timestamp, arbitration_id, bytes(pdu.data)
        # first frame
        if length > MAX_TRANSFER_BYTES:
            counters.invalid += 1
            return None
        self._open[arbitration_id] = _Open(length, bytearray(pdu.data), 1, timestamp)
        self._awaiting_fc.add(arbitration_id)
        return None

    def _consecutive(self, timestamp: float, arbitration_id: int, pdu: PDU, current: _Open | None,
                     counters: IsoTpCounters) -> Transfer | None:
        if current is None:
            counters.stray_cf += 1
            return None
        if pdu.seqnum != current.next_seq:
            counters.out_of_order += 1
            self._drop(arbitration_id)
            return None
        if not current.got_cf:
            current.got_cf = True
            self._awaiting_fc.discard(arbitration_id)
        current.next_seq = (current.next_seq + 1) & 0xF
        current.last = timestamp
        need = current.length - len(current.data)
        chunk = pdu.data
        if len(chunk) < need:
            current.data += chunk
            return None
        current.data += chunk[:need]
        counters.padding_bytes += len(chunk) - need
        del self._open[arbitration_id]
        counters.completed += 1
        counters.multi += 1
        return timestamp, arbitration_id, bytes(current.data)

    def _other(self, arbitration_id: int, data: bytes) -> None:
        """A frame of another id: count it if it is the flow control of a response we follow."""
        response = self.request_ids.get(arbitration_id)
        if response is None:
            if not (self._learn and len(self._awaiting_fc) == 1 and len(data) >= 3 and data[0] >> 4 == 3):
                return
            response = next(iter(self._awaiting_fc))
        if len(data) >= 3 and data[0] >> 4 == 3 and (data[0] & 0xF) < 3:
            if arbitration_id not in self.request_ids:
                self.request_ids[arbitration_id] = response
            self.counters[response].flow_control_seen += 1

    def _drop(self, arbitration_id: int) -> None:
        self._open.pop(arbitration_id, None)
        self._awaiting_fc.discard(arbitration_id)

    def expire(self, now: float) -> int:
        """Drop (and count as timeouts) transfers whose last frame is older than N_Cr; returns how many."""
        stale = [rid for rid, item in self._open.items() if now - item.last > self._n_cr]
        for rid in stale:
            self.counters[rid].timeouts += 1
            self._drop(rid)
        return len(stale)

    def total(self) -> IsoTpCounters:
        total = IsoTpCounters()
        for counters in self.counters.values():
            for name, value in counters.as_dict().items():
                setattr(total, name, getattr(total, name) + value)
        return total
