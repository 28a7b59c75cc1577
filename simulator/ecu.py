"""A scripted ECU for tests: answers OBD-II mode 01/03/07/0A and UDS 0x19 on a python-can bus.

``ScriptedEcu(bus, script)`` listens on its physical request id (0x7E0) and the OBD functional id
(0x7DF) and answers on its response id (0x7E8), through a real ISO-TP stack (can-isotp's
``NotifierBasedCanStack``: rxid 0x7E0, txid 0x7E8).  A functional request (always a single frame, ISO
15765-4) is read off the bus directly and answered through the same stack, so a multi-frame answer waits
for the tester's flow control on 0x7E0, as a real ECU does: a tester that sends none gets the first frame
and nothing more (the stack gives up after ``fc_timeout_ms``).  Frames are padded to 8 bytes with 0xCC.

What it answers (script time t = seconds since ``start()``):

* mode 01: every requested PID the script has a value for, in request order, J1979-encoded; PID 01
  (MIL from the stored DTCs, or ``mil``; DTC count = stored DTCs) and the supported-PID bit fields 00 /
  20 / 40 are built from the script; no PID known: no answer (J1979);
* modes 03 / 07 / 0A: ``[0x43, count, DTC_hi, DTC_lo, ...]`` of the DTCs active at t;
* UDS 0x19 0x02 (status mask): ``[0x59, 0x02, 0xFF, (DTC, status)...]`` of the UDS DTCs whose status at
  t matches the mask; 0x19 0x0A: every UDS DTC of the script with its status; another subfunction: NRC
  0x12; another service: NRC 0x11 (physical requests only: functional ones get no negative answer).

Script (``EcuScript``; ``load_script`` reads the same from YAML)::

    pids:                        # PID -> constant, or {ramp: [from, to, over_s]} (linear, then holds)
      0x0D: {ramp: [0, 100, 10]}
      0x0C: 1800
    dtcs:                        # OBD-II lists, each DTC active from from_s until until_s (absent: stays)
      stored:    [{code: P0301, from_s: 2, until_s: 6}]
      pending:   [{code: P0420}]
      permanent: []
    mil: null                    # null: on while any stored DTC is active
    uds:                         # 3-byte DTC -> status timeline [[from_s, status], ...]
      - {dtc: 0x030117, status: [[0, 0x2F], [4, 0x28]]}

In Python a PID value may also be any ``Callable[[float], float]`` of script time.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import can
import isotp
import yaml
from isotp.can_message import CanMessage
from isotp.protocol import PDU

from agent.diag.dtc import parse_obd_dtc_code

PCT = 100 / 255
# SAE J1979 mode 01: PID -> (data bytes, scale, offset); value = raw * scale + offset, raw big-endian.
LINEAR_PIDS: dict[int, tuple[int, float, float]] = {
    0x04: (1, PCT, 0), 0x05: (1, 1, -40), 0x0B: (1, 1, 0), 0x0C: (2, 0.25, 0), 0x0D: (1, 1, 0),
    0x0E: (1, 0.5, -64), 0x0F: (1, 1, -40), 0x10: (2, 0.01, 0), 0x11: (1, PCT, 0), 0x1F: (2, 1, 0),
    0x21: (2, 1, 0), 0x2F: (1, PCT, 0), 0x31: (2, 1, 0), 0x33: (1, 1, 0), 0x42: (2, 0.001, 0),
    0x46: (1, 1, -40), 0x5B: (1, PCT, 0), 0x5C: (1, 1, -40), 0x5E: (2, 0.05, 0),
}
SUPPORT_PIDS = (0x00, 0x20, 0x40)
MONITOR_STATUS_PID = 0x01
OBD_DTC_SERVICES = {0x03: "stored", 0x07: "pending", 0x0A: "permanent"}
UDS_READ_DTC = 0x19
AVAILABILITY_MASK = 0xFF  # every ISO 14229-1 status bit is supported here
NRC_SERVICE_NOT_SUPPORTED, NRC_SUBFUNCTION_NOT_SUPPORTED, NRC_BAD_LENGTH = 0x11, 0x12, 0x13

PidValue = float | Callable[[float], float]


@dataclass(frozen=True)
class Ramp:
    """``start`` at t = ``begin_s``, linearly to ``end`` over ``duration_s``, then ``end``."""

    start: float
    end: float
    duration_s: float
    begin_s: float = 0.0

    def __call__(self, t: float) -> float:
        if self.duration_s <= 0 or t >= self.begin_s + self.duration_s:
            return self.end if t >= self.begin_s else self.start
        share = max(0.0, t - self.begin_s) / self.duration_s
        return self.start + (self.end - self.start) * share


@dataclass(frozen=True)
class ScriptedDtc:
    """An OBD-II DTC ("P0301") active from ``from_s`` until ``until_s`` (None: for good)."""

    code: str
    from_s: float = 0.0
    until_s: float | None = None

    def active(self, t: float) -> bool:
        return t >= self.from_s and (self.until_s is None or t < self.until_s)


@dataclass(frozen=True)
class UdsDtc:
    """A 3-byte UDS DTC and its status byte over time: ``((from_s, status), ...)``; 0 before the first."""

    dtc: int
    status: tuple[tuple[float, int], ...]

    def status_at(self, t: float) -> int:
        current = 0
        for since, status in sorted(self.status):
            if t >= since:
                current = status
        return current


@dataclass
class EcuScript:
    pids: dict[int, PidValue] = field(default_factory=dict)
    stored: list[ScriptedDtc] = field(default_factory=list)
    pending: list[ScriptedDtc] = field(default_factory=list)
    permanent: list[ScriptedDtc] = field(default_factory=list)
    uds: list[UdsDtc] = field(default_factory=list)
    mil: bool | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.pids) - set(LINEAR_PIDS))
        if unknown:
            raise ValueError(f"PID 0x{unknown[0]:02X}: not one this ECU encodes "
                             f"({', '.join(f'{p:02X}' for p in sorted(LINEAR_PIDS))})")
        for dtc in (*self.stored, *self.pending, *self.permanent):
            parse_obd_dtc_code(dtc.code)  # a bad code fails here, not in the middle of a test

    def value(self, pid: int, t: float) -> float:
        source = self.pids[pid]
        return float(source(t) if callable(source) else source)

    def obd_dtcs(self, kind: str, t: float) -> list[int]:
        return [parse_obd_dtc_code(d.code) for d in getattr(self, kind) if d.active(t)]


def script_from_mapping(data: dict) -> EcuScript:
    """The YAML form (see the module doc) as an ``EcuScript``."""
    unknown = sorted(set(data) - {"pids", "dtcs", "mil", "uds"})
    if unknown:
        raise ValueError(f"ECU script: unknown key {unknown[0]!r} (known: pids, dtcs, mil, uds)")
    pids: dict[int, PidValue] = {}
    for pid, value in (data.get("pids") or {}).items():
        if isinstance(value, dict) and set(value) == {"ramp"}:
            start, end, over = value["ramp"]
            pids[int(pid)] = Ramp(float(start), float(end), float(over))
        elif isinstance(value, int | float):
            pids[int(pid)] = float(value)
        else:
            raise ValueError(f"ECU script: pids.0x{int(pid):02X}: a number or {{ramp: [from, to, over_s]}}")
    dtcs = data.get("dtcs") or {}
    lists = {kind: [ScriptedDtc(str(d["code"]), float(d.get("from_s", 0.0)),
                                None if d.get("until_s") is None else float(d["until_s"]))
                    for d in dtcs.get(kind) or ()]
             for kind in ("stored", "pending", "permanent")}
    uds = [UdsDtc(int(item["dtc"]), tuple((float(s), int(v)) for s, v in item["status"]))
           for item in data.get("uds") or ()]
    return EcuScript(pids, lists["stored"], lists["pending"], lists["permanent"], uds, data.get("mil"))


def load_script(path: str | Path) -> EcuScript:
    return script_from_mapping(yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})


def encode_pid(pid: int, value: float) -> bytes:
    """J1979 data bytes of a linear PID (clamped to what the bytes can hold)."""
    size, scale, offset = LINEAR_PIDS[pid]
    raw = round((value - offset) / scale)
    return min(max(raw, 0), (1 << (8 * size)) - 1).to_bytes(size, "big")


def respond(script: EcuScript, request: bytes, t: float, functional: bool = False) -> bytes | None:
    """The answer SDU to a request SDU at script time ``t`` (None: no answer)."""
    if not request:
        return None
    sid = request[0]
    if sid == 0x01:
        return _mode01(script, request[1:7], t)
    if sid in OBD_DTC_SERVICES:
        codes = script.obd_dtcs(OBD_DTC_SERVICES[sid], t)
        return bytes([sid + 0x40, len(codes)]) + b"".join(c.to_bytes(2, "big") for c in codes)
    if sid == UDS_READ_DTC:
        return _read_dtc_information(script, request, t, functional)
    return None if functional else bytes([0x7F, sid, NRC_SERVICE_NOT_SUPPORTED])


def _mode01(script: EcuScript, pids: bytes, t: float) -> bytes | None:
    supported = set(script.pids) | {MONITOR_STATUS_PID}
    supported |= {base for base in SUPPORT_PIDS if base == 0 or any(p > base for p in supported)}
    out = bytearray([0x41])
    for pid in pids:
        if pid in SUPPORT_PIDS and pid in supported:
            bits = sum(1 << (32 - (p - pid)) for p in supported if pid < p <= pid + 32)
            out += bytes([pid]) + bits.to_bytes(4, "big")
        elif pid == MONITOR_STATUS_PID:
            stored = script.obd_dtcs("stored", t)
            mil = bool(stored) if script.mil is None else script.mil
            out += bytes([pid, (0x80 if mil else 0) | min(len(stored), 0x7F), 0x00, 0x00, 0x00])
        elif pid in script.pids:
            out += bytes([pid]) + encode_pid(pid, script.value(pid, t))
    return bytes(out) if len(out) > 1 else None


def _read_dtc_information(script: EcuScript, request: bytes, t: float, functional: bool) -> bytes | None:
    if len(request) < 2:
        return None if functional else bytes([0x7F, UDS_READ_DTC, NRC_BAD_LENGTH])
    subfunction = request[1]
    if subfunction == 0x02:
        if len(request) < 3:
            return None if functional else bytes([0x7F, UDS_READ_DTC, NRC_BAD_LENGTH])
        mask = request[2]
        records = [(d.dtc, d.status_at(t)) for d in script.uds if d.status_at(t) & mask]
    elif subfunction == 0x0A:
        records = [(d.dtc, d.status_at(t)) for d in script.uds]
    else:
        return None if functional else bytes([0x7F, UDS_READ_DTC, NRC_SUBFUNCTION_NOT_SUPPORTED])
    body = b"".join(dtc.to_bytes(3, "big") + bytes([status]) for dtc, status in records)
    return bytes([0x59, subfunction, AVAILABILITY_MASK]) + body


class ScriptedEcu:
    """The script on a bus (see the module doc).  ``start()`` / ``stop()``, or use it as a context manager."""

    def __init__(self, bus: can.BusABC, script: EcuScript, *, request_id: int = 0x7E0, response_id: int = 0x7E8,
                 functional_id: int = 0x7DF, clock: Callable[[], float] = time.monotonic,
                 fc_timeout_ms: int = 1000, padding: int = 0xCC) -> None:
        self.script = script
        self.functional_id = functional_id
        self._bus = bus
        self._clock = clock
        self._started_at: float | None = None
        self._notifier: can.Notifier | None = None
        self._functional: queue.Queue[bytes] = queue.Queue()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self.requests: list[tuple[float, bool, bytes]] = []  # (script time, functional, request SDU)
        self.responses: list[tuple[float, bytes]] = []
        self.errors: list[str] = []  # can-isotp errors by class name (FlowControlTimeoutError, ...)
        address = isotp.Address(isotp.AddressingMode.Normal_11bits, rxid=request_id, txid=response_id)
        self._params = {"tx_padding": padding, "tx_data_min_length": 8, "rx_flowcontrol_timeout": fc_timeout_ms,
                        "blocksize": 0, "stmin": 0}
        self._address = address
        self._stack: isotp.NotifierBasedCanStack | None = None

    @property
    def elapsed(self) -> float:
        return 0.0 if self._started_at is None else self._clock() - self._started_at

    def start(self) -> ScriptedEcu:
        self._notifier = can.Notifier(self._bus, [self._on_frame], timeout=0.01)
        self._stack = isotp.NotifierBasedCanStack(self._bus, self._notifier, address=self._address,
                                                  error_handler=self._on_error, params=self._params)
        self._stack.start()
        self._started_at = self._clock()
        self._stop.clear()
        self._worker = threading.Thread(target=self._serve, name="scripted-ecu", daemon=True)
        self._worker.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._worker is not None:
            self._worker.join(2.0)
            self._worker = None
        if self._stack is not None:
            self._stack.stop()
            self._stack = None
        if self._notifier is not None:
            self._notifier.stop()
            self._notifier = None

    def __enter__(self) -> ScriptedEcu:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _on_frame(self, msg: can.Message) -> None:
        """Notifier callback: functional requests (single frames on the functional id) go to the worker."""
        if msg.arbitration_id != self.functional_id or msg.is_extended_id or msg.is_error_frame or not msg.data:
            return
        try:
            pdu = PDU(CanMessage(msg.arbitration_id, len(msg.data), bytes(msg.data), False, msg.is_fd))
        except ValueError:
            return
        if pdu.type == PDU.Type.SINGLE_FRAME:
            self._functional.put(bytes(pdu.data))

    def _on_error(self, error: Exception) -> None:
        with self._lock:
            self.errors.append(type(error).__name__)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                request, functional = self._functional.get(timeout=0.005), True
            except queue.Empty:
                physical = self._stack.recv() if self._stack is not None else None
                if physical is None:
                    continue
                request, functional = bytes(physical), False
            t = self.elapsed
            answer = respond(self.script, request, t, functional)
            with self._lock:
                self.requests.append((t, functional, request))
                if answer is not None:
                    self.responses.append((t, answer))
            if answer is not None and self._stack is not None:
                self._stack.send(answer)
