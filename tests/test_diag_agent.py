"""The running agent asks a scripted ECU for PIDs and DTCs on a bus marked transmit, and only there.

In one process on python-can virtual buses: the agent (AgentRuntime, its live source, its request runner)
and ``simulator.ecu.ScriptedEcu`` on the "obd" bus; a second bus without ``transmit`` is listened to, to
see that nothing is ever written to it.  DTC changes leave as ``diagnostics`` batches (vehicle_health),
OBD-II answers are decoded by the shipped OBD2 DBC into telemetry.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import can
import pytest

from agent.batch import decode_batch, iter_samples
from agent.buffer import BatchStore
from agent.config import load_config
from agent.diag.config import diagnostics_config
from agent.runtime import AgentRuntime
from agent.sources.live import LiveSource
from agent.yamlsrc import ConfigError
from simulator.ecu import EcuScript, Ramp, ScriptedDtc, ScriptedEcu, UdsDtc
from tests.e2e_support import grant, wait_until

REPO = Path(__file__).resolve().parents[1]
OBD_DBC = REPO / "dbc" / "obd2" / "obd2_j1979.dbc"

pytestmark = pytest.mark.diag


def write_config(tmp_path: Path, requests: str, transmit: str = "true") -> Path:
    config = tmp_path / "agent.yaml"
    config.write_text(f"""\
vehicle: {{id: diag-test}}
state: {{dir: {tmp_path / 'state'}}}
batching: {{max_age_s: 1.0}}
owner_page: {{enabled: false}}
buses:
  - {{name: obd, interface: virtual, channel: obd, dbc: [{OBD_DBC}], transmit: {transmit}}}
  - {{name: body, interface: virtual, channel: body, dbc: [{OBD_DBC}]}}
diagnostics:
  requests:
{requests}
""")
    return config


REQUESTS = """\
    - {bus: obd, kind: obd01, pids: [0x0D, 0x0C, 0x05], period_s: 0.3}
    - {bus: obd, kind: obd03, period_s: 0.5}
    - {bus: obd, kind: uds19, status_mask: 0xFF, request_id: 0x7E0, period_s: 0.5}
"""


def test_requests_answers_and_dtc_events_end_to_end(tmp_path):
    channel = f"obd-{uuid.uuid4().hex[:8]}"
    body_channel = f"body-{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path, REQUESTS)
    grant(tmp_path / "state", {"vehicle_health": None, "driving": None})
    agent_obd = can.Bus(interface="virtual", channel=channel, receive_own_messages=False)
    agent_body = can.Bus(interface="virtual", channel=body_channel, receive_own_messages=False)
    ecu_bus = can.Bus(interface="virtual", channel=channel)
    body_listener = can.Bus(interface="virtual", channel=body_channel)
    script = EcuScript(pids={0x0D: Ramp(0, 90, 6), 0x0C: 1800.0, 0x05: 85.0},
                       stored=[ScriptedDtc("P0301", from_s=1.5, until_s=4.0)],
                       # Three UDS DTCs: a 15-byte answer, so it takes several frames and our flow control.
                       uds=[UdsDtc(0x030117, ((0.0, 0x2F), (3.0, 0x28))), UdsDtc(0x0A1B00, ((0.0, 0x08),)),
                            UdsDtc(0xD00100, ((0.0, 0x09),))])
    agent = AgentRuntime(config, source=LiveSource({"obd": agent_obd, "body": agent_body}))
    runner = threading.Thread(target=agent.run)
    with ScriptedEcu(ecu_bus, script):
        agent.start()
        runner.start()
        time.sleep(6.0)
        agent.stop()
        runner.join(20)
    assert not runner.is_alive()
    status_requests = agent.diagnostics.snapshot()["requests"]
    # Written on the transmit bus only: the body bus heard nothing from the agent.
    assert body_listener.recv(0.2) is None
    assert status_requests["obd:obd01"]["requests_sent"] >= 10
    assert status_requests["obd:obd01"]["responses_seen"] >= 10
    assert status_requests["obd:uds19"]["flow_controls_sent"] >= 5
    assert status_requests["obd:uds19"]["responses_seen"] >= 5
    store = BatchStore(agent.config.buffer_path())  # the agent closed its own at the stop
    batches = [decode_batch(b.payload) for b in store.pending(10_000)]
    diag = [b for b in batches if b.header["stream"] == "diagnostics"]
    events = [e for b in diag for e in b.header["dtc_events"]]
    obd = [(e["code"], e["change"]) for e in events if e["source"] == "obd03"]
    assert obd == [("P0301", "appeared"), ("P0301", "cleared")]
    uds = [(e["code"], e["change"], e["status"], e["previous_status"]) for e in events if e["source"] == "uds19"]
    assert uds == [("P0301-17", "appeared", 0x2F, None), ("P0A1B-00", "appeared", 0x08, None),
                   ("U1001-00", "appeared", 0x09, None), ("P0301-17", "status_changed", 0x28, 0x2F)]
    appeared = next(e for e in events if e["source"] == "uds19")
    assert "confirmed" in appeared["status_bits"] and "testFailed" in appeared["status_bits"]
    assert all(b.header["categories"] == ["vehicle_health"] for b in diag)
    # OBD-II answers decoded by the shipped DBC: engine speed as scripted, vehicle speed ramping up.
    samples = [s for b in batches if b.header["stream"] == "telemetry" for s in iter_samples(b)]
    rpm = {value for _t, _bus, key, value, _u in samples if key.endswith("EngineSpeed") or "0C" in key}
    assert rpm and rpm <= {1800.0}, sorted({key for _t, _b, key, _v, _u in samples})
    store.close()


def test_a_request_on_a_bus_without_transmit_is_a_config_error(tmp_path):
    config = write_config(tmp_path, "    - {bus: body, kind: obd03, period_s: 1}\n")
    with pytest.raises(ConfigError) as info:
        diagnostics_config(load_config(config))
    assert "agent.yaml:10: diagnostics.requests[0].bus: bus 'body' is not writable" in str(info.value)


def test_no_diagnostics_section_sends_nothing(tmp_path):
    config = write_config(tmp_path, "    []\n").read_text().replace("diagnostics:\n  requests:\n    []\n", "")
    (tmp_path / "agent.yaml").write_text(config)
    loaded = load_config(tmp_path / "agent.yaml")
    assert diagnostics_config(loaded).requests == ()


def test_a_reload_applies_changed_requests_and_keeps_their_counters(tmp_path):
    channel = f"obd-{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path, "    - {bus: obd, kind: obd01, pids: [0x0C], period_s: 0.2}\n")
    grant(tmp_path / "state", {"vehicle_health": None, "driving": None})
    agent_obd = can.Bus(interface="virtual", channel=channel, receive_own_messages=False)
    agent_body = can.Bus(interface="virtual", channel=f"body-{uuid.uuid4().hex[:8]}", receive_own_messages=False)
    ecu_bus = can.Bus(interface="virtual", channel=channel)
    ecu = ScriptedEcu(ecu_bus, EcuScript(pids={0x0C: 1800.0, 0x05: 85.0}, stored=[ScriptedDtc("P0301")]))
    agent = AgentRuntime(config, source=LiveSource({"obd": agent_obd, "body": agent_body}))
    runner = threading.Thread(target=agent.run)

    def counters() -> dict:  # of whichever runner the agent has now (a reload may replace it)
        return agent.diagnostics.snapshot()["requests"]

    with ecu:
        agent.start()
        runner.start()
        try:
            assert wait_until(lambda: counters()["obd:obd01"]["responses_seen"] >= 3, 10, 0.02)
            first = agent.diagnostics
            # The same requests again: the running requests go on untouched.
            agent.request_reload()
            assert wait_until(lambda: agent.reloads["ok"] == 1, 10, 0.02)
            assert agent.diagnostics is first
            before = first.snapshot()["requests"]["obd:obd01"]["requests_sent"]
            config.write_text(config.read_text().replace(
                "    - {bus: obd, kind: obd01, pids: [0x0C], period_s: 0.2}\n",
                "    - {bus: obd, kind: obd01, pids: [0x0C, 0x05], period_s: 0.2}\n"
                "    - {bus: obd, kind: obd03, period_s: 0.2}\n"))
            agent.request_reload()
            assert wait_until(lambda: agent.reloads["ok"] == 2, 10, 0.02)
            reloaded_at = ecu.elapsed  # the old runner stopped before the reload counted
            assert wait_until(lambda: counters().get("obd:obd03", {}).get("responses_seen", 0) >= 3, 10, 0.02)
        finally:
            agent.stop()
            runner.join(20)
    assert not runner.is_alive() and agent.reloads["rejected"] == 0
    requests = agent.diagnostics.snapshot()["requests"]
    # The obd01 request's counters went on from where they were; the new one counts from the reload.
    assert requests["obd:obd01"]["requests_sent"] > before >= 3
    assert requests["obd:obd03"]["requests_sent"] >= 3
    after = [sdu for at, _functional, sdu in ecu.requests if at > reloaded_at + 0.1]
    assert bytes([0x01, 0x0C, 0x05]) in after and bytes([0x03]) in after and bytes([0x01, 0x0C]) not in after
    assert not first._thread.is_alive()  # the old requests stopped: nothing sends them twice
