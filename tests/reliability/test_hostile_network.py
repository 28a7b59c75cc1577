"""Network-facing input and logs in silence (issue 11), against real processes.

* The MQTT commands topic: 20,000 refused commands carrying a VIN and coordinates, into a running
  `vehicle-agent run` through a real Mosquitto; the ledger grows by a few entries, neither it nor the log
  holds a byte of the attacker's text, the status counts every refusal, and the agent keeps uploading.
* CAN stays local: a config whose bus would reach another host is refused by the running agent's own
  command before any socket opens (a guard in the process ends it if one ever tried).
* Logs: the `vehicle-agent` commands, as their own processes, say when a log ended early or held nothing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from agent.ledger import LEDGER_FILE, Ledger
from agent.uplink.topics import commands_topic
from tests.e2e_support import REPO, grant
from tests.reliability.rig import GRANTS, AgentProcess, Simulator, live_config

pytestmark = pytest.mark.reliability

ATTACKER_VIN = "LFV2A21K6A4001234"
ATTACKER_TEXT = (ATTACKER_VIN, ATTACKER_VIN.lower(), "31.230416", "121.473701", "attacker-marker")
FLOOD = 20_000


def _publisher(broker) -> mqtt.Client:
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def _refusals(ledger_path: Path) -> tuple[int, int, int, int]:
    """(entries, bytes, refusals they account for, refusals recorded one by one) of the remote_refused lines."""
    entries = size = refused = single = 0
    lines = ledger_path.read_bytes().splitlines(keepends=True) if ledger_path.exists() else []
    for line in lines:
        if b'"kind":"remote_refused"' not in line:
            continue
        entries += 1
        size += len(line)
        reason = json.loads(line)["fields"]["reason"]
        if reason.startswith("rate_limited:"):
            refused += int(reason.split(":")[1])
        else:
            refused += 1
            single += 1
    return entries, size, refused, single


def test_a_flood_of_refused_commands_leaves_a_few_lines_and_no_attacker_text(tmp_path, mosquitto, logbook):
    state = tmp_path / "state"
    grant(state, GRANTS)
    sim = Simulator(logbook, speed="10", loop=8, name="flood-sim")
    agent = AgentProcess(live_config(tmp_path, sim.port, mosquitto.port), logbook, name="flood")
    ledger_path = state / LEDGER_FILE
    publisher = None
    try:
        agent.wait_ready()
        status = agent.wait_status(lambda s: s["uplink"]["connected"] and s["uplink"]["acked"] > 0, timeout=60)
        time.sleep(0.5)  # the subscription follows the CONNACK
        entries_before, bytes_before, _, _ = _refusals(ledger_path)
        ledger_bytes_before = ledger_path.stat().st_size
        topic = commands_topic("vehicles", status["vehicle"])
        publisher = _publisher(mosquitto)
        started = time.monotonic()
        sent = []
        for i in range(FLOOD):
            # Grants, which the network may never make, dressed with the attacker's text everywhere.
            payload = {"action": "grant", "category": "location", "level": "round3", "expiry": "1y",
                       "purpose": f"attacker-marker {ATTACKER_VIN}", "vin": ATTACKER_VIN,
                       "position": {"lat": 31.230416, "lon": 121.473701}, "n": i}
            if i % 4 == 1:
                payload["action"] = f"grant {ATTACKER_VIN} 31.230416,121.473701"
            elif i % 4 == 2:
                payload = {"action": "narrow", "category": "location", "level": f"{ATTACKER_VIN} 31.230416"}
            elif i % 4 == 3:
                payload = {"action": "revoke", "category": f"attacker-marker {ATTACKER_VIN}"}
            sent.append(publisher.publish(topic, json.dumps(payload), qos=1))
        for info in sent:
            info.wait_for_publish(60)
        flood_s = time.monotonic() - started
        # Every refusal is either in the ledger or counted in its summary entry.
        deadline = time.monotonic() + 90
        while _refusals(ledger_path)[2] - entries_before < FLOOD:
            assert time.monotonic() < deadline, f"refusals accounted for: {_refusals(ledger_path)}"
            assert agent.alive, agent.log()
            time.sleep(0.5)
        after_flood = agent.status()
        # Still up and still uploading: batches delivered keep growing after the flood.
        later = agent.wait_status(lambda s: s["uplink"]["acked"] > after_flood["uplink"]["acked"] + 2, timeout=60)
    finally:
        if publisher is not None:
            publisher.loop_stop()
            publisher.disconnect()
        sim.kill()
        report = agent.stop() if agent.alive else None
    entries, size, refused, single = _refusals(ledger_path)
    ledger_growth = ledger_path.stat().st_size - ledger_bytes_before
    print(f"{FLOOD} refused commands in {flood_s:.1f} s: {entries - entries_before} ledger entries, "
          f"{size - bytes_before} bytes of remote_refused lines (ledger grew {ledger_growth} bytes, uploads "
          f"included)")
    assert refused - entries_before == FLOOD
    assert entries - entries_before <= 15 and size - bytes_before <= 6000
    stored = ledger_path.read_text()
    log = agent.log_path.read_text(errors="replace")
    for text in ATTACKER_TEXT:
        assert text not in stored, text
        assert text not in log, text
    assert log.count("refused consent command from the network") <= 15
    assert Ledger.in_dir(state).verify().ok
    assert report is not None and report["uplink"]["acked"] > after_flood["uplink"]["acked"]
    assert later["pipeline"]["frames_in"] > after_flood["pipeline"]["frames_in"]
    assert "remote_commands" in later, "runtime.status() must show RemoteCommands.counters() (issue 11 report)"
    counters = later["remote_commands"]
    assert counters["refused"] == counters["received"] == FLOOD and counters["accepted"] == 0
    assert counters["rate_limited"] == FLOOD - (single - entries_before)
    assert set(counters["reasons"]) <= {"widens", "unknown_action", "unknown_level", "unknown_category"}


# A process that runs the agent's own command line, ended (exit 99) if anything connects or looks up a name
# that is not loopback: the refusal must come first, so nothing here ever reaches another host.
GUARDED_MAIN = r"""
import ipaddress, os, socket, sys

def _refuse(what):
    sys.stderr.write(f"GUARD: {what}\n")
    sys.stderr.flush()
    os._exit(99)

def _loopback(host):
    try:
        return host == "localhost" or ipaddress.ip_address(str(host).strip("[]")).is_loopback
    except ValueError:
        return False

_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo

def connect(self, address):
    if isinstance(address, tuple) and not _loopback(address[0]):
        _refuse(f"connect {address!r}")
    return _connect(self, address)

def getaddrinfo(host, *args, **kwargs):
    if host is not None and not _loopback(host):
        _refuse(f"getaddrinfo {host!r}")
    return _getaddrinfo(host, *args, **kwargs)

socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
from agent.cli.main import main
sys.exit(main(sys.argv[1:]))
"""

REMOTE_BUSES = [
    ("{name: truck, interface: slcan, channel: 'socket://192.0.2.7:3333'}", "channel 'socket://192.0.2.7:3333'"),
    ("{name: truck, interface: serial, channel: 'rfc2217://can-gw.example:2217'}", "host 'can-gw.example'"),
    ("{name: truck, interface: socketcand, channel: can0, options: {host: 192.0.2.7, port: 29536}}",
     "socketcand host '192.0.2.7' is not loopback"),
    ("{name: truck, interface: slcan, channel: /dev/ttyUSB0, options: {host: 192.0.2.7}}",
     "slcan host '192.0.2.7' is not a loopback address"),
    ("{name: truck, interface: pcan, channel: PCAN_LANBUS1}", "PCAN-LAN channel"),
]


@pytest.mark.parametrize(("bus", "words"), REMOTE_BUSES, ids=["slcan-socket", "serial-rfc2217", "socketcand",
                                                              "host-option", "pcan-lan"])
def test_the_agent_refuses_a_bus_that_would_leave_the_machine(bus, words, tmp_path, logbook):
    config = tmp_path / "agent.yaml"
    config.write_text(f"vehicle: {{id: rel-truck}}\nbuses:\n  - {bus}\n"
                      f"state: {{dir: {json.dumps(str(tmp_path / 'state'))}}}\n")
    result = subprocess.run([sys.executable, "-c", GUARDED_MAIN, "run", "--config", str(config)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    logbook.path("remote-bus", ".log").write_text(result.stdout + result.stderr)
    assert "GUARD" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    assert words in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_log_commands_say_when_a_log_ended_early_or_held_nothing(shared_data, tmp_path, logbook):
    blf = (shared_data / "logs/css_nissan_leaf_uds_and_canmod_gps.blf").read_bytes()
    cut = tmp_path / "cut.blf"
    cut.write_bytes(blf[: len(blf) // 2])
    noise = tmp_path / "noise.asc"
    noise.write_bytes(bytes(range(256)) * 16)
    empty = tmp_path / "empty.asc"
    empty.write_bytes(b"")
    dbc = shared_data / "dbc/css-electronics/canmod-gps.dbc"
    ended_early = (rf"read \d+ frames; the file ended early \(truncated BLF object at byte \d+; the file ends at "
                   rf"byte {len(blf) // 2}\)")
    # (path, extra arguments): (exit status, what stderr says).  A log that ended early is used up to the
    # damage and said as a warning (exit 0), or refused with --strict (exit 2).
    expected = {
        (cut, ()): (0, ended_early),
        (cut, ("--strict",)): (2, ended_early),
        (noise, ()): (1, r"no CAN frames in 4096 bytes \(not an ASC log\?\)"),
        (empty, ()): (1, r"no CAN frames: the file is empty \(0 bytes\)"),
    }
    for (path, extra), (code, pattern) in expected.items():
        for command in ("decode", "stats"):
            result = subprocess.run([sys.executable, "-m", "agent.cli.main", command, str(path), "--dbc", str(dbc),
                                     *extra], cwd=REPO, capture_output=True, text=True, timeout=60)
            logbook.path(f"log-{command}", ".log").write_text(result.stdout + result.stderr)
            assert result.returncode == code, (path, command, result.stderr)
            assert re.search(re.escape(str(path)) + ": " + pattern, result.stderr), result.stderr
