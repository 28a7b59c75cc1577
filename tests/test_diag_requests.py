"""agent.diag.requests against recorded frames and against simulator.ecu on python-can virtual buses: pacing
(fake clock), 6-PID chunking, flow control only for our own requests, multi-frame answers reassembled
passively (agent.isotp) and parsed (agent.diag.dtc), and buses that must not be written."""

from __future__ import annotations

import itertools
import threading
import time

import can
import cantools
import pytest

from agent.diag.dtc import DtcTracker, parse_dtc_response
from agent.diag.request_spec import NotWritableError, RequestSpec, spec_from_config, split_mode01_response
from agent.diag.requests import RequestScheduler, build_scheduler
from agent.isotp import IsoTpReassembler
from simulator.cli import main as sim_main
from simulator.ecu import EcuScript, Ramp, ScriptedDtc, ScriptedEcu, UdsDtc, respond, script_from_mapping

pytestmark = pytest.mark.diag

CC = 0xCC
_channels = itertools.count()


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sent_recorder():
    sent: list[tuple[str, int, bytes]] = []
    return sent, lambda bus, msg: sent.append((bus, msg.arbitration_id, bytes(msg.data)))


def frame(can_id: int, *data: int) -> can.Message:
    return can.Message(arbitration_id=can_id, data=bytes(data).ljust(8, bytes([CC])), is_extended_id=False)


def padded(*data: int) -> bytes:
    return bytes(data).ljust(8, bytes([CC]))


# -- construction ---------------------------------------------------------------------
def test_a_request_for_a_bus_that_is_not_writable_is_refused():
    _, send = sent_recorder()
    specs = [RequestSpec("obd", "obd01", 1.0, pids=(0x0D,)), RequestSpec("body", "uds19", 10.0)]
    with pytest.raises(NotWritableError, match=r"diagnostics\.requests\[1\]: bus 'body' is not writable.*"
                                               r"set buses\[\]\.transmit: true on bus 'body'"):
        RequestScheduler(specs, send, writable={"obd"})
    with pytest.raises(NotWritableError, match=r"bus 'obd' is not writable"):
        build_scheduler([{"bus": "obd", "kind": "obd03", "period_s": 5}], send, writable=set())


def test_specs_are_checked_and_errors_name_the_key():
    with pytest.raises(ValueError, match="obd01 needs pids"):
        RequestSpec("obd", "obd01", 1.0)
    with pytest.raises(ValueError, match="kind 'obd09'"):
        RequestSpec("obd", "obd09", 1.0)
    with pytest.raises(ValueError, match=r"diagnostics\.requests\[2\]\.pid: unknown key"):
        spec_from_config({"bus": "obd", "kind": "obd01", "period_s": 1, "pid": [13]}, "diagnostics.requests[2]")
    with pytest.raises(ValueError, match=r"diagnostics\.requests\[0\]\.period_s: required"):
        spec_from_config({"bus": "obd", "kind": "obd03"})
    with pytest.raises(ValueError, match=r"diagnostics\.requests\[0\]: ids are 11-bit"):
        spec_from_config({"bus": "obd", "kind": "uds19", "period_s": 1, "request_id": 0x18DA10F1})
    spec = spec_from_config({"bus": "obd", "kind": "uds19", "period_s": 30, "request_id": 0x7E1, "status_mask": 0x08})
    assert (spec.resolved_request_id, spec.resolved_response_ids, spec.functional) == (0x7E1, (0x7E9,), False)
    obd = spec_from_config({"bus": "obd", "kind": "obd07", "period_s": 30})
    assert (obd.resolved_request_id, obd.resolved_response_ids) == (0x7DF, tuple(range(0x7E8, 0x7F0)))


# -- pacing and frames (recorded, fake clock) ---------------------------------------------
def test_periods_are_respected_with_a_fake_clock():
    sent, send = sent_recorder()
    clock = FakeClock()
    specs = [RequestSpec("obd", "obd01", 1.0, pids=(0x0D,)), RequestSpec("obd", "uds19", 5.0, status_mask=0x09)]
    scheduler = RequestScheduler(specs, send, {"obd"}, clock=clock)
    times: list[tuple[float, int]] = []

    def answer_everything():
        for _, can_id, data in sent[len(answered):]:
            answered.append(can_id)
            if data[1] == 0x01:
                scheduler.on_frame("obd", frame(0x7E8, 0x03, 0x41, 0x0D, 0x20))
            elif data[1] == 0x19:
                scheduler.on_frame("obd", frame(0x7E8, 0x03, 0x59, 0x02, 0xFF))

    answered: list[int] = []
    for step in range(0, 110):  # 11 s in 100 ms steps
        clock.now = 100.0 + step / 10
        before = len(sent)
        assert scheduler.due() == len(sent) - before
        times += [(round(clock.now - 100.0, 1), can_id) for _, can_id, _ in sent[before:]]
        answer_everything()
    assert [t for t, can_id in times if can_id == 0x7DF] == [float(s) for s in range(11)]
    assert [t for t, can_id in times if can_id == 0x7E0] == [0.0, 5.0, 10.0]
    assert sent[0] == ("obd", 0x7DF, padded(0x02, 0x01, 0x0D))
    assert sent[1] == ("obd", 0x7E0, padded(0x03, 0x19, 0x02, 0x09))
    counters = scheduler.counters
    assert counters["obd:obd01"].requests_sent == 11 and counters["obd:obd01"].responses_seen == 11
    assert counters["obd:uds19"].requests_sent == 3 and counters["obd:uds19"].timeouts == 0
    assert scheduler.next_due() == pytest.approx(111.0)


def test_mode01_chunks_of_six_pids_one_in_flight_at_a_time():
    sent, send = sent_recorder()
    clock = FakeClock()
    pids = (0x04, 0x05, 0x0B, 0x0C, 0x0D, 0x0F, 0x10, 0x11)
    scheduler = RequestScheduler([RequestSpec("obd", "obd01", 2.0, pids=pids)], send, {"obd"}, clock=clock)
    assert scheduler.due() == 1
    assert sent == [("obd", 0x7DF, bytes([0x07, 0x01, 0x04, 0x05, 0x0B, 0x0C, 0x0D, 0x0F]))]
    clock.now += 0.01
    assert scheduler.due() == 0  # the second chunk waits for the first one's answer
    scheduler.on_frame("obd", frame(0x7E8, 0x03, 0x41, 0x04, 0x80))
    assert scheduler.due() == 1
    assert sent[1] == ("obd", 0x7DF, padded(0x03, 0x01, 0x10, 0x11))
    # no answer to the second chunk: it times out after 1 s and the channel frees
    clock.now += 1.0
    assert scheduler.due() == 0
    assert scheduler.counters["obd:obd01"].timeouts == 1
    clock.now += 1.0
    assert scheduler.due() == 1 and sent[2][2][2] == 0x04  # the period came round: the first chunk again


def test_flow_control_only_for_our_requests():
    sent, send = sent_recorder()
    clock = FakeClock()
    specs = [RequestSpec("obd", "obd03", 10.0), RequestSpec("obd", "uds19", 10.0)]
    scheduler = RequestScheduler(specs, send, {"obd"}, clock=clock)
    # nothing asked yet: a first frame is someone else's conversation
    scheduler.on_frame("obd", frame(0x7E8, 0x10, 0x0A, 0x43, 0x04, 0x03, 0x01, 0x04, 0x20))
    assert sent == [] and scheduler.unsolicited_first_frames == 1
    assert scheduler.due() == 2
    del sent[:]
    # ours (mode 03 to 0x7DF) from ECU 0x7E9: flow control to its physical id 0x7E1
    scheduler.on_frame("obd", frame(0x7E9, 0x10, 0x0A, 0x43, 0x04, 0x03, 0x01, 0x04, 0x20))
    assert sent == [("obd", 0x7E1, padded(0x30, 0x00, 0x00))]
    # ours (UDS to 0x7E0, physical): flow control to the request id
    scheduler.on_frame("obd", frame(0x7E8, 0x10, 0x0B, 0x59, 0x02, 0xFF, 0x03, 0x01, 0x17))
    assert sent[1] == ("obd", 0x7E0, padded(0x30, 0x00, 0x00))
    # a first frame of another service, of another subfunction, on another id, on another bus: none
    scheduler.on_frame("obd", frame(0x7EA, 0x10, 0x0A, 0x62, 0xF1, 0x90, 0x57, 0x30, 0x4C))
    scheduler.on_frame("obd", frame(0x7E8, 0x10, 0x0B, 0x59, 0x0A, 0xFF, 0x03, 0x01, 0x17))
    scheduler.on_frame("obd", frame(0x7BB, 0x10, 0x0A, 0x43, 0x04, 0x03, 0x01, 0x04, 0x20))
    scheduler.on_frame("body", frame(0x7E8, 0x10, 0x0A, 0x43, 0x04, 0x03, 0x01, 0x04, 0x20))
    assert len(sent) == 2
    assert scheduler.unsolicited_first_frames == 3  # on response ids: before any request, 0x7EA, subfunction 0x0A
    assert scheduler.counters["obd:obd03"].flow_controls_sent == 1
    assert scheduler.counters["obd:uds19"].flow_controls_sent == 1


def test_response_pending_extends_the_wait_and_a_timeout_is_counted():
    sent, send = sent_recorder()
    clock = FakeClock()
    scheduler = RequestScheduler([RequestSpec("obd", "uds19", 60.0)], send, {"obd"}, clock=clock)
    scheduler.due()
    assert sent == [("obd", 0x7E0, padded(0x03, 0x19, 0x02, 0xFF))]
    scheduler.on_frame("obd", frame(0x7E8, 0x03, 0x7F, 0x19, 0x78))
    clock.now += 3.0
    scheduler.due()
    assert scheduler.counters["obd:uds19"].timeouts == 0  # still pending: P2* is 5 s
    clock.now += 2.5
    scheduler.due()
    counters = scheduler.counters["obd:uds19"]
    assert (counters.timeouts, counters.negative_responses, counters.responses_seen) == (1, 1, 1)


# -- against the scripted ECU on virtual buses ---------------------------------------------
class Rig:
    """An ECU, the agent's bus (the scheduler sends and reads on it) and a passive sniffer on one channel."""

    def __init__(self, *ecus: tuple[EcuScript, int], clock: FakeClock, fc_timeout_ms: int = 1000) -> None:
        self.channel = f"diag-{next(_channels)}"
        self.clock = clock
        self.buses = [can.Bus(interface="virtual", channel=self.channel) for _ in ecus]
        self.ecus = [ScriptedEcu(bus, script, request_id=rid - 8, response_id=rid, clock=clock,
                                 fc_timeout_ms=fc_timeout_ms) for bus, (script, rid) in zip(self.buses, ecus)]
        self.agent = can.Bus(interface="virtual", channel=self.channel)
        self.sniffer = can.Bus(interface="virtual", channel=self.channel, receive_own_messages=True)
        self.reassembler = IsoTpReassembler(range(0x7E8, 0x7F0), {0x7E0 + n: 0x7E8 + n for n in range(8)})
        self.seen: list[can.Message] = []
        self.transfers: list[tuple[int, bytes]] = []
        for ecu in self.ecus:
            ecu.start()

    def close(self) -> None:
        for ecu in self.ecus:
            ecu.stop()
        for bus in (*self.buses, self.agent, self.sniffer):
            bus.shutdown()

    def pump(self, scheduler: RequestScheduler | None, until, timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sniffed = self.sniffer.recv(0.002)
            while sniffed is not None:
                self.seen.append(sniffed)
                done = self.reassembler.feed(sniffed.timestamp, sniffed.arbitration_id, bytes(sniffed.data))
                if done is not None:
                    self.transfers.append((done[1], done[2]))
                sniffed = self.sniffer.recv(0)
            # A virtual bus queues a frame for every other bus at once: what the sniffer has, the agent has too.
            while (msg := self.agent.recv(0)) is not None:
                if scheduler is not None:
                    scheduler.on_frame("obd", msg)
            if until():
                return
        raise AssertionError(f"timed out; transfers so far: {[(hex(i), p.hex()) for i, p in self.transfers]}")


@pytest.fixture
def clock():
    return FakeClock(1000.0)


UDS_SCRIPT = EcuScript(
    pids={0x0D: Ramp(0, 100, 10), 0x0C: 1800.0, 0x05: 90.0, 0x2F: 62.5, 0x11: 20.0, 0x42: 14.2, 0x46: 21.0,
          0x5C: 95.0},
    stored=[ScriptedDtc("P0301", from_s=2, until_s=6), ScriptedDtc("P0420", from_s=0), ScriptedDtc("U0123", 0)],
    uds=[UdsDtc(0x030117, ((0.0, 0x2F), (4.0, 0x28))), UdsDtc(0xC12300, ((0.0, 0x09),)),
         UdsDtc(0x042000, ((1.0, 0x04),))])


def test_multi_frame_dtc_answer_is_paced_reassembled_and_parsed(clock):
    rig = Rig((UDS_SCRIPT, 0x7E8), clock=clock)
    try:
        clock.now += 2.0  # script time 2 s
        send = lambda bus, msg: rig.agent.send(msg)  # noqa: E731
        scheduler = RequestScheduler([RequestSpec("obd", "uds19", 10.0, status_mask=0xFF)], send, {"obd"},
                                     clock=clock)
        assert scheduler.due() == 1
        rig.pump(scheduler, lambda: rig.transfers)
        ((ecu, payload),) = rig.transfers
        assert ecu == 0x7E8 and len(payload) == 15  # 3 header bytes + 3 records: a first frame and 2 CFs
        reading = parse_dtc_response(payload)
        assert [(d.code, d.status, d.status_bits) for d in reading.dtcs] == [
            ("P0301-17", 0x2F, ("testFailed", "testFailedThisOperationCycle", "pending", "confirmed",
                                "testFailedSinceLastClear")),
            ("U0123-00", 0x09, ("testFailed", "confirmed")),
            ("P0420-00", 0x04, ("pending",))]
        flow_controls = [m for m in rig.seen if m.arbitration_id == 0x7E0 and m.data[0] == 0x30]
        assert [bytes(m.data) for m in flow_controls] == [padded(0x30, 0x00, 0x00)]
        consecutive = [m for m in rig.seen if m.arbitration_id == 0x7E8 and m.data[0] >> 4 == 2]
        assert len(consecutive) == 2 and all(len(m.data) == 8 for m in rig.seen)
        counters = scheduler.counters["obd:uds19"]
        assert (counters.requests_sent, counters.flow_controls_sent, counters.responses_seen) == (1, 1, 1)
        assert rig.reassembler.counters[0x7E8].flow_control_seen == 1
    finally:
        rig.close()


def test_a_requester_that_sends_no_flow_control_gets_no_consecutive_frames(clock):
    rig = Rig((UDS_SCRIPT, 0x7E8), clock=clock, fc_timeout_ms=200)
    try:
        rig.agent.send(frame(0x7E0, 0x03, 0x19, 0x02, 0xFF))  # by hand: nobody answers the first frame
        rig.pump(None, lambda: any(m.arbitration_id == 0x7E8 for m in rig.seen))
        time.sleep(0.4)  # past the ECU's flow control timeout
        rig.pump(None, lambda: bool(rig.ecus[0].errors), timeout=1.0)
        answers = [bytes(m.data) for m in rig.seen if m.arbitration_id == 0x7E8]
        assert len(answers) == 1 and answers[0][:3] == bytes([0x10, 0x0B, 0x59])  # the first frame only (2 DTCs at t=0)
        assert rig.transfers == [] and "FlowControlTimeoutError" in rig.ecus[0].errors
    finally:
        rig.close()


def test_mode01_values_from_the_ecu_decode_with_the_dbc(clock, repo_root):
    db = cantools.database.load_file(repo_root / "dbc/obd2/obd2_j1979.dbc")
    rig = Rig((UDS_SCRIPT, 0x7E8), clock=clock)
    try:
        clock.now += 5.0  # the speed ramp is half way: 50 km/h
        pids = (0x0D, 0x0C, 0x05, 0x2F, 0x11, 0x42, 0x46, 0x5C, 0x01)
        send = lambda bus, msg: rig.agent.send(msg)  # noqa: E731
        scheduler = RequestScheduler([RequestSpec("obd", "obd01", 1.0, pids=pids)], send, {"obd"}, clock=clock)
        assert scheduler.due() == 1
        rig.pump(scheduler, lambda: len(rig.transfers) == 1)
        assert scheduler.due() == 1  # the second chunk once the first is answered (same fake time)
        rig.pump(scheduler, lambda: len(rig.transfers) == 2)
        values = {}
        for ecu, payload in rig.transfers:
            for part in split_mode01_response(payload):
                decoded = db.decode_message(ecu, bytes([len(part)]) + part, decode_choices=False, allow_truncated=True)
                values.update({k: v for k, v in decoded.items() if k not in ("Length", "Service", "PID")})
        assert values == pytest.approx({
            "VehicleSpeed": 50, "EngineSpeed": 1800.0, "CoolantTemperature": 90, "FuelLevel": 159 * 100 / 255,
            "ThrottlePosition": 51 * 100 / 255, "ControlModuleVoltage": 14.2, "AmbientAirTemperature": 21,
            "EngineOilTemperature": 95, "MilOn": 1, "DtcCount": 3})
        assert scheduler.counters["obd:obd01"].flow_controls_sent == 2  # both answers took several frames
    finally:
        rig.close()


def test_two_ecus_answer_a_functional_request_and_dtcs_change_on_script(clock):
    other = EcuScript(stored=[ScriptedDtc("C0035", from_s=0)])
    rig = Rig((UDS_SCRIPT, 0x7E8), (other, 0x7E9), clock=clock)
    tracker = DtcTracker()
    events = []
    try:
        send = lambda bus, msg: rig.agent.send(msg)  # noqa: E731
        scheduler = RequestScheduler([RequestSpec("obd", "obd03", 1.0)], send, {"obd"}, clock=clock)
        for script_time in (0.0, 3.0, 4.0, 7.0):
            clock.now = rig.ecus[0]._started_at + script_time
            rig.transfers.clear()
            assert scheduler.due() == 1
            rig.pump(scheduler, lambda: len(rig.transfers) == 2)
            for ecu, payload in sorted(rig.transfers):
                events += [(script_time, c.ecu, c.code, c.change) for c in tracker.observe(clock.now, "obd", ecu,
                                                                                          payload)]
        assert events == [
            (0.0, 0x7E8, "P0420", "appeared"), (0.0, 0x7E8, "U0123", "appeared"), (0.0, 0x7E9, "C0035", "appeared"),
            (3.0, 0x7E8, "P0301", "appeared"),
            (7.0, 0x7E8, "P0301", "cleared")]
        counters = scheduler.counters["obd:obd03"]
        assert counters.responses_seen == 8 and counters.requests_sent == 4
        # 0x7E8's list of 3 DTCs (8 bytes) takes several frames (flow control to 0x7E0); 1-2 DTCs fit one frame
        assert {m.arbitration_id for m in rig.seen if m.data[0] == 0x30} == {0x7E0}
    finally:
        rig.close()


def test_nothing_is_ever_written_on_a_bus_that_is_not_writable(clock):
    rig = Rig((UDS_SCRIPT, 0x7E8), clock=clock)
    read_only = f"diag-ro-{next(_channels)}"
    ro_bus = can.Bus(interface="virtual", channel=read_only)
    ro_listener = can.Bus(interface="virtual", channel=read_only)
    buses = {"obd": rig.agent, "ro": ro_bus}
    try:
        def send(bus, msg):
            buses[bus].send(msg)
        with pytest.raises(NotWritableError, match="bus 'ro' is not writable"):
            RequestScheduler([RequestSpec("ro", "obd03", 1.0)], send, {"obd"}, clock=clock)
        scheduler = RequestScheduler([RequestSpec("obd", "uds19", 1.0)], send, {"obd"}, clock=clock)
        assert scheduler.due() == 1
        # the ECU's first frame shown as if read on the read-only bus: no flow control goes anywhere
        scheduler.on_frame("ro", frame(0x7E8, 0x10, 0x0F, 0x59, 0x02, 0xFF, 0x03, 0x01, 0x17))
        rig.pump(scheduler, lambda: rig.transfers)
        assert parse_dtc_response(rig.transfers[0][1]).dtcs[0].code == "P0301-17"
        time.sleep(0.05)
        assert ro_listener.recv(0.05) is None
    finally:
        ro_bus.shutdown()
        ro_listener.shutdown()
        rig.close()


def test_the_script_answers_without_a_bus():
    script = script_from_mapping({
        "pids": {0x0D: {"ramp": [0, 100, 10]}, 0x05: 90},
        "dtcs": {"stored": [{"code": "P0301", "from_s": 2, "until_s": 6}], "pending": [{"code": "P0420"}]},
        "uds": [{"dtc": 0x030117, "status": [[0, 0x2F], [4, 0x28]]}]})
    assert respond(script, bytes([0x01, 0x0D, 0x05]), 2.5) == bytes([0x41, 0x0D, 25, 0x05, 130])
    assert respond(script, bytes([0x01, 0x00]), 0) == bytes([0x41, 0x00, 0x88, 0x08, 0x00, 0x00])  # 01 05 0D
    assert respond(script, bytes([0x01, 0x01]), 3) == bytes([0x41, 0x01, 0x81, 0, 0, 0])
    assert respond(script, bytes([0x01, 0x01]), 6) == bytes([0x41, 0x01, 0x00, 0, 0, 0])
    assert respond(script, bytes([0x01, 0x5B]), 0) is None  # no PID the ECU has: J1979 says no answer
    assert respond(script, bytes([0x03]), 1) == bytes([0x43, 0x00])
    assert respond(script, bytes([0x03]), 2) == bytes([0x43, 0x01, 0x03, 0x01])
    assert respond(script, bytes([0x07]), 9) == bytes([0x47, 0x01, 0x04, 0x20])
    assert respond(script, bytes([0x19, 0x02, 0x01]), 5) == bytes([0x59, 0x02, 0xFF])  # 0x28 has no testFailed
    assert respond(script, bytes([0x19, 0x02, 0x08]), 5) == bytes([0x59, 0x02, 0xFF, 0x03, 0x01, 0x17, 0x28])
    assert respond(script, bytes([0x19, 0x06]), 0) == bytes([0x7F, 0x19, 0x12])
    assert respond(script, bytes([0x22, 0xF1, 0x90]), 0) == bytes([0x7F, 0x22, 0x11])
    assert respond(script, bytes([0x22, 0xF1, 0x90]), 0, functional=True) is None
    with pytest.raises(ValueError, match="PID 0x99"):
        EcuScript(pids={0x99: 1.0})


def test_the_ecu_command_answers_on_a_virtual_bus(tmp_path, capsys):
    script = tmp_path / "ecu.yaml"
    script.write_text("pids:\n  0x0D: 88\n  0x0C: 2000\ndtcs:\n  stored: [{code: P0301}]\n")
    channel = f"diag-cli-{next(_channels)}"
    result: list[int] = []
    command = threading.Thread(target=lambda: result.append(
        sim_main(["ecu", str(script), "--bus", f"virtual://{channel}", "--duration", "1.5s"])))
    with can.Bus(interface="virtual", channel=channel) as tester:
        command.start()
        time.sleep(0.3)  # the command opens its bus and starts its stack
        tester.send(frame(0x7DF, 0x03, 0x01, 0x0D, 0x0C))
        answer = tester.recv(1.0)
        command.join(5.0)
    assert result == [0]
    assert answer.arbitration_id == 0x7E8 and bytes(answer.data) == padded(0x06, 0x41, 0x0D, 88, 0x0C, 0x1F, 0x40)
    assert "1 request(s), 1 answer(s)" in capsys.readouterr().err
