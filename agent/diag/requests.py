"""Periodic OBD-II and UDS requests, and the flow control their long answers need.

``RequestScheduler`` owns no thread and no bus: the caller hands it a ``send(bus_name, can.Message)``
callable, calls ``due()`` often (every 10-50 ms; it sends what is due and returns how many) and shows it
every frame read from those buses (``on_frame``).  Reassembling and decoding the answers stays with the
passive path (agent.isotp, agent.transport_decode, agent.diag.dtc): the scheduler only paces them.

Requests (``RequestSpec``, their ids and payloads) are described in ``agent.diag.request_spec``.

Pacing: a request is due ``period_s`` after it was last sent (the first time: at once).  At most one
request is in flight per (bus, request id): the next waits until the previous one has a complete answer
or timed out (a tester must not talk over an ECU's answer).  ``timeout_s`` (1 s) without a complete answer
counts a timeout; a negative response 0x78 (response pending) extends the wait to 5 s (P2*).

Flow control: when a first frame arrives on a response id of one of OUR requests still waiting on that
bus (same service, and for mode 01 a PID we asked for, for UDS the subfunction), the scheduler answers
``0x30 0x00 0x00`` (continue to send, no block limit, no separation time; built by can-isotp's
``PDU.craft_flow_control_data``) padded to 8 bytes: on the ECU's physical request id (response id - 8)
for a functional request, on the request id for a physical one.  Traffic nobody here asked for gets no
flow control: it is counted (``unsolicited_first_frames``) and left alone.

Buses: the caller says which buses may be written (``writable``).  A spec for any other bus is refused
when the scheduler is built (``NotWritableError``, naming the bus and the config field that allows it),
and every send checks the bus again, so nothing can go out on a bus not listed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import can

from agent.diag.request_spec import (
    PHYSICAL_TO_RESPONSE,
    POSITIVE_OFFSET,
    NotWritableError,
    RequestSpec,
    spec_from_config,
    writable_problem,
)

if TYPE_CHECKING:  # the ISO-TP stack itself is imported where it is used
    from isotp.protocol import PDU

DEFAULT_TIMEOUT_S = 1.0
RESPONSE_PENDING_S = 5.0  # P2*server (ISO 14229-2): how long an ECU may keep saying "response pending"
DEFAULT_PADDING = 0xCC
FRAME_BYTES = 8
NEGATIVE_RESPONSE = 0x7F
RESPONSE_PENDING_NRC = 0x78

@dataclass(slots=True)
class RequestCounters:
    requests_sent: int = 0
    flow_controls_sent: int = 0
    responses_seen: int = 0  # answers that began (single frame or first frame), per responding ECU
    negative_responses: int = 0
    timeouts: int = 0  # requests without a complete answer within timeout_s
    send_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(eq=False)
class _Request:
    """One frame to send periodically: a spec, or one 6-PID chunk of an obd01 spec."""

    spec: RequestSpec
    name: str
    sdu: bytes
    next_due: float = float("-inf")

    def accepts(self, sdu_start: bytes) -> bool:
        """Does an answer beginning with these bytes answer this request?"""
        service = self.sdu[0]
        if len(sdu_start) < 2:
            return False
        if sdu_start[0] == NEGATIVE_RESPONSE:
            return sdu_start[1] == service
        if sdu_start[0] != service + POSITIVE_OFFSET:
            return False
        if self.spec.kind == "obd01":
            return sdu_start[1] in self.sdu[1:]
        if self.spec.kind == "uds19":
            return sdu_start[1] == self.sdu[1]
        return True


@dataclass(eq=False)
class _Pending:
    request: _Request
    sent_at: float
    deadline: float
    answered: bool = False
    responders: set[int] = field(default_factory=set)
    open_transfers: dict[int, int] = field(default_factory=dict)  # response id -> bytes still to come

    @property
    def in_flight(self) -> bool:
        return not self.answered or bool(self.open_transfers)


class RequestScheduler:
    """Sends the requests of ``specs`` when due and the flow control their answers need (see the module doc)."""

    def __init__(self, specs: Sequence[RequestSpec], send: Callable[[str, can.Message], None],
                 writable: Set[str], *, clock: Callable[[], float] = time.monotonic,
                 timeout_s: float = DEFAULT_TIMEOUT_S, padding: int = DEFAULT_PADDING,
                 writable_field: str = "buses[].transmit", specs_field: str = "diagnostics.requests") -> None:
        self._writable = frozenset(writable)
        for index, spec in enumerate(specs):
            problem = writable_problem(spec, self._writable, writable_field)
            if problem:
                raise NotWritableError(f"{specs_field}[{index}]: {problem}")
        self._send_fn = send
        self._clock = clock
        self._timeout = timeout_s
        self._padding = padding
        self.counters: dict[str, RequestCounters] = {}
        self._requests: list[_Request] = []
        # Per bus, the ids answers to our requests come on: every other frame is skipped unparsed.
        self._response_ids: dict[str, set[int]] = {}
        for spec in specs:
            name = self._unique_name(spec.name or f"{spec.bus}:{spec.kind}")
            self.counters[name] = RequestCounters()
            self._requests += [_Request(spec, name, sdu) for sdu in spec.payloads()]
            self._response_ids.setdefault(spec.bus, set()).update(spec.resolved_response_ids)
        self._live: dict[str, list[_Pending]] = {}
        self.unsolicited_first_frames = 0  # first frames on those ids that answer nothing we asked

    def _unique_name(self, base: str) -> str:
        name, n = base, 1
        while name in self.counters:
            n += 1
            name = f"{base}#{n}"
        return name

    # -- sending -------------------------------------------------------------------
    def due(self, now: float | None = None) -> int:
        """Send every request whose period has elapsed and whose channel is free; how many were sent.
        ``now`` must come from the scheduler's ``clock`` (its reading when not given)."""
        now = self._clock() if now is None else now
        self._expire(now)
        sent = 0
        for request in sorted(self._requests, key=lambda r: r.next_due):
            if request.next_due > now:
                break
            if self._busy(request.spec.bus, request.spec.resolved_request_id):
                continue
            request.next_due = now + request.spec.period_s
            counters = self.counters[request.name]
            if not self._transmit(request.spec.bus, request.spec.resolved_request_id,
                                  bytes([len(request.sdu)]) + request.sdu, counters):
                continue
            counters.requests_sent += 1
            self._live.setdefault(request.spec.bus, []).append(
                _Pending(request, now, now + self._timeout))
            sent += 1
        return sent

    def next_due(self) -> float:
        """When the next request falls due on the scheduler's clock (-inf: one was never sent yet)."""
        return min((r.next_due for r in self._requests), default=float("inf"))

    def _busy(self, bus: str, request_id: int) -> bool:
        return any(p.in_flight and p.request.spec.resolved_request_id == request_id
                   for p in self._live.get(bus, ()))

    def _transmit(self, bus: str, can_id: int, pci_and_data: bytes, counters: RequestCounters) -> bool:
        if bus not in self._writable:  # unreachable through the constructor; kept so it stays so
            raise NotWritableError(f"bus {bus!r} is not writable")
        data = pci_and_data.ljust(FRAME_BYTES, bytes([self._padding]))
        try:
            self._send_fn(bus, can.Message(arbitration_id=can_id, data=data, is_extended_id=False))
        except (can.CanError, OSError):
            counters.send_errors += 1
            return False
        return True

    # -- receiving -----------------------------------------------------------------
    def on_frame(self, bus: str, msg: can.Message) -> None:
        """Look at a frame read from ``bus``: counts answers, sends flow control for ours."""
        if (msg.arbitration_id not in self._response_ids.get(bus, ()) or msg.is_error_frame or msg.is_remote_frame
                or msg.is_extended_id or not msg.data):
            return
        now = self._clock()
        self._expire(now)
        response_id = msg.arbitration_id
        from isotp.can_message import CanMessage  # at use: a service may never see a diagnostic frame
        from isotp.protocol import PDU

        try:
            pdu = PDU(CanMessage(response_id, len(msg.data), bytes(msg.data), False, msg.is_fd))
        except ValueError:
            return
        live = self._live.get(bus, [])
        if pdu.type == PDU.Type.CONSECUTIVE_FRAME:
            self._consecutive(live, response_id, len(pdu.data))
        elif pdu.type == PDU.Type.SINGLE_FRAME:
            pending = self._match(live, response_id, bytes(pdu.data))
            if pending is not None:
                self._answer(pending, response_id, bytes(pdu.data), now)
        elif pdu.type == PDU.Type.FIRST_FRAME:
            self._first_frame(bus, live, response_id, pdu, now)

    def _match(self, live: list[_Pending], response_id: int, sdu_start: bytes) -> _Pending | None:
        """The oldest waiting request this answer belongs to (one that has not heard from this ECU yet
        first); None when we did not ask for it."""
        candidates = [p for p in live if response_id in p.request.spec.resolved_response_ids
                      and p.request.accepts(sdu_start)]
        fresh = [p for p in candidates if response_id not in p.responders]
        chosen = fresh or candidates
        return chosen[0] if chosen else None

    def _answer(self, pending: _Pending, response_id: int, sdu: bytes, now: float) -> None:
        counters = self.counters[pending.request.name]
        counters.responses_seen += 1
        pending.responders.add(response_id)
        if sdu[0] == NEGATIVE_RESPONSE:
            counters.negative_responses += 1
            if len(sdu) > 2 and sdu[2] == RESPONSE_PENDING_NRC:
                pending.deadline = max(pending.deadline, now + RESPONSE_PENDING_S)
                return  # the real answer is still to come
        pending.answered = True

    def _first_frame(self, bus: str, live: list[_Pending], response_id: int, pdu: PDU, now: float) -> None:
        pending = self._match(live, response_id, bytes(pdu.data))
        if pending is None:
            self.unsolicited_first_frames += 1
            return
        counters = self.counters[pending.request.name]
        spec = pending.request.spec
        fc_id = response_id - PHYSICAL_TO_RESPONSE if spec.functional else spec.resolved_request_id
        from isotp.protocol import PDU

        flow_control = PDU.craft_flow_control_data(flow_status=0, blocksize=0, stmin=0)
        if self._transmit(bus, fc_id, flow_control, counters):
            counters.flow_controls_sent += 1
        counters.responses_seen += 1
        pending.responders.add(response_id)
        pending.open_transfers[response_id] = (pdu.length or 0) - len(pdu.data)

    def _consecutive(self, live: list[_Pending], response_id: int, size: int) -> None:
        for pending in live:
            remaining = pending.open_transfers.get(response_id)
            if remaining is None:
                continue
            remaining -= size
            if remaining > 0:
                pending.open_transfers[response_id] = remaining
            else:
                del pending.open_transfers[response_id]
                pending.answered = True
            return

    def _expire(self, now: float) -> None:
        for bus, live in self._live.items():
            keep = []
            for pending in live:
                if now < pending.deadline:
                    keep.append(pending)
                elif not pending.answered or pending.open_transfers:
                    self.counters[pending.request.name].timeouts += 1
            self._live[bus] = keep

    # -- reporting -------------------------------------------------------------------
    def adopt_counters(self, previous: RequestScheduler) -> None:
        """Carry the counters of ``previous`` (the scheduler a reload replaces) over: a request under the same
        name goes on counting from its old figures; one that is gone takes its counters with it."""
        for name, counters in previous.counters.items():
            if name in self.counters:
                self.counters[name] = counters
        self.unsolicited_first_frames += previous.unsolicited_first_frames

    def snapshot(self) -> dict:
        return {"requests": {name: c.as_dict() for name, c in self.counters.items()},
                "unsolicited_first_frames": self.unsolicited_first_frames,
                "waiting": sum(len(v) for v in self._live.values())}


def build_scheduler(items: Iterable[Mapping], send: Callable[[str, can.Message], None], writable: Set[str],
                    **options) -> RequestScheduler:
    """A scheduler from config mappings (``diagnostics.requests``), each checked with its index."""
    specs = [spec_from_config(item, f"diagnostics.requests[{i}]") for i, item in enumerate(items)]
    return RequestScheduler(specs, send, writable, **options)
