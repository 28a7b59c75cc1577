"""Permissions and secrets (issue 7): state directory 0700, keys 0600, control socket 0600; no key, no
certificate password and no VIN in any log line across the whole suite.

This test runs last (conftest.py): besides its own agent - mutual TLS with an encrypted client key, a VIN,
an incident snapshot exported and signed, consent changed from the command line, a status dump (SIGUSR1), a
reload (SIGHUP), and a run with a wrong key password - it scans every log and report the suite's agent,
simulator and CLI processes wrote into the session's LogBook.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from agent.export.signing import KEY_FILE as SIGNING_KEY_FILE
from agent.privacy.pseudonym import KEY_FILE as PSEUDONYM_KEY_FILE
from simulator.receiver.client import Receiver, ReceiverTls
from tests.broker import TEST_CLIENT_KEY_PASSWORD
from tests.e2e_support import REPO, grant
from tests.reliability.rig import GRANTS, TEST_VIN, AgentProcess, LogBook, Simulator, live_config, wait_quiet

pytestmark = pytest.mark.reliability

PASSWORD_ENV = "VEHICLE_KEY_PASSWORD"
WRONG_PASSWORD = "wrong-password-7f3a91c2"
INCIDENT = """\
incidents:
  pre_s: 0.2
  post_s: 0.2
  triggers:
    - {name: trip1, when: "gnss_odo.DistanceTrip >= 1"}
"""


def tls_uplink(broker, password_env: str = PASSWORD_ENV) -> str:
    pki = broker.tls
    q = json.dumps
    return "\n".join([
        "uplink:",
        "  region: cn-test",
        f"  broker: {{host: 127.0.0.1, port: {broker.port}}}",
        f"  allowed_brokers: [{{host: 127.0.0.1, port: {broker.port}}}]",
        f"  tls: {{ca: {q(str(pki.ca))}, cert: {q(str(pki.client.cert))}, key: {q(str(pki.client.key))},"
        f" key_password_env: {password_env}}}",
        "  backoff_min: 0.1",
        "  backoff_max: 1.0",
    ]) + "\n"


def cli(book: LogBook, name: str, *args: str) -> subprocess.CompletedProcess:
    """A `vehicle-agent` command whose output joins the scanned logs."""
    result = subprocess.run([sys.executable, "-m", "agent.cli.main", *args], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    book.path(name, ".log").write_text(f"$ vehicle-agent {' '.join(args)}\n{result.stdout}{result.stderr}")
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def secrets_of(state_dirs: list[Path], broker) -> dict[str, str]:
    """Every secret a log line must never hold, by what it is."""
    found = {"VIN": TEST_VIN, "VIN (lower case)": TEST_VIN.lower(),
             "TLS key password": TEST_CLIENT_KEY_PASSWORD.decode(), "wrong TLS key password": WRONG_PASSWORD}
    for state in state_dirs:
        pseudonym = state / PSEUDONYM_KEY_FILE
        if pseudonym.exists():
            key = pseudonym.read_bytes()
            found[f"pseudonym key of {state} (hex)"] = key.hex()
            found[f"pseudonym key of {state} (base64)"] = base64.b64encode(key).decode()
        signing = state / SIGNING_KEY_FILE
        if signing.exists():
            private = serialization.load_pem_private_key(signing.read_bytes(), None)
            raw = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                        serialization.NoEncryption())
            found[f"signing key of {state} (hex)"] = raw.hex()
            found[f"signing key of {state} (PEM)"] = "".join(signing.read_text().splitlines()[1:-1])
    client_key = broker.tls.client.key.read_text().splitlines()
    found["TLS client key (PEM body)"] = "".join(line for line in client_key if not line.startswith("-----"))[:64]
    return found


def test_modes_are_owner_only_and_no_secret_reaches_any_log(tmp_path, mosquitto_tls, logbook, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, TEST_CLIENT_KEY_PASSWORD.decode())
    state = tmp_path / "state"
    grant(state, GRANTS)
    state.chmod(0o755)  # too open: the agent must tighten it
    (state / "fleet-extra.key").write_bytes(os.urandom(32))
    (state / "fleet-extra.key").chmod(0o644)
    pki = mosquitto_tls.tls
    receiver = Receiver(mosquitto_tls.host, mosquitto_tls.port, tmp_path / "receiver.sqlite",
                        tls=ReceiverTls(str(pki.ca), str(pki.receiver.cert), str(pki.receiver.key)))
    receiver.start()
    sim = Simulator(logbook, speed="20", loop=1, name="secrets-sim")
    config = live_config(tmp_path, sim.port, extra=tls_uplink(mosquitto_tls) + INCIDENT)
    # umask 0: every mode below is the agent's own doing, not the environment's.
    agent = AgentProcess(config, logbook, name="secrets", umask=0)
    try:
        agent.wait_ready()
        running = {"state dir": mode(state), "control socket": mode(agent.control_socket),
                   "pseudonym key": mode(state / PSEUDONYM_KEY_FILE), "extra key": mode(state / "fleet-extra.key")}
        cli(logbook, "consent-show", "consent", "show", "--config", str(config))
        cli(logbook, "consent-revoke", "consent", "revoke", "location", "--config", str(config))
        cli(logbook, "status", "status", "--json", "--config", str(config))
        agent.process.send_signal(signal.SIGUSR1)  # counters dumped to the log
        agent.process.send_signal(signal.SIGHUP)  # reload
        sim.wait(timeout=60)
        wait_quiet(agent, quiet_s=1.0, timeout=30)
        status = agent.wait_status(lambda s: s["sidecars"]["snapshots"] == 1 and s["reloads"]["ok"] == 1
                                   and s["buffer"]["counters"]["pending_batches"] == 0, timeout=30)
        report = agent.stop()
    finally:
        sim.kill()
        if agent.alive:
            agent.kill()
        receiver.stop()
    assert report["uplink"]["acked"] > 0 and status["uplink"]["endpoint"].startswith("mqtts://")
    assert status["vehicle"].startswith("v") and TEST_VIN not in json.dumps(status)
    # The incident, exported and signed: the signing key is made on first use.
    incident = cli(logbook, "incidents", "incidents", "--config", str(config), "--json")
    incident_id = json.loads(incident.stdout.splitlines()[0])["id"]
    export = tmp_path / "export"
    cli(logbook, "export", "export", "--incident", incident_id, "--out", str(export), "--config", str(config))
    identity = cli(logbook, "identity", "identity", "--config", str(config), "--json")
    fingerprint = json.loads(identity.stdout)["signing_key"]
    cli(logbook, "verify", "export", "verify", str(export), "--fingerprint", fingerprint)
    # A wrong key password: refused with a clear reason, never echoed.
    (tmp_path / "wrong").mkdir()
    wrong_sim = Simulator(logbook, speed="20", name="wrong-sim")
    wrong = AgentProcess(live_config(tmp_path / "wrong", wrong_sim.port,
                                     extra=tls_uplink(mosquitto_tls, "WRONG_KEY_PASSWORD")), logbook,
                         name="secrets-wrong-password", env={"WRONG_KEY_PASSWORD": WRONG_PASSWORD})
    try:
        wrong.wait_ready()
        refused = wrong.wait_status(lambda s: s["uplink"].get("refused") or s["uplink"].get("last_error"),
                                    timeout=30)["uplink"]
    finally:
        wrong.stop()
        wrong_sim.kill()
    modes = {**{f"running: {k}": v for k, v in running.items()}, "state dir": mode(state),
             "pseudonym key": mode(state / PSEUDONYM_KEY_FILE), "signing key": mode(state / SIGNING_KEY_FILE)}
    # Every state dir of the suite, as its agents left it (the tmpfs of the disk-full test is gone).
    suite_dirs = [d for d in logbook.state_dirs if d.is_dir()]
    for directory in suite_dirs:
        modes[f"suite state dir {directory.parent.name}"] = mode(directory)
        for key in (*directory.glob("*.key"), *directory.glob("*.pem")):
            modes[f"suite key {directory.parent.name}/{key.name}"] = mode(key)
    secrets = secrets_of(suite_dirs, mosquitto_tls)
    files = logbook.files()
    lines = 0
    leaks = []
    for path in files:
        text = path.read_bytes().decode("utf-8", "replace")
        lines += text.count("\n")
        leaks += [f"{what} in {path.name}" for what, secret in secrets.items() if secret in text]
    print(f"\npermissions: {json.dumps({k: oct(v) for k, v in modes.items()})}\nwrong password refused: "
          f"{refused.get('refused') or refused.get('last_error')}\nsecrets: scanned {len(files)} "
          f"files, {lines} lines from {len(logbook.state_dirs)} agents' state dirs for {len(secrets)} secrets; "
          f"leaks: {leaks or 'none'}")
    assert modes["running: state dir"] == modes["state dir"] == 0o700
    assert modes["running: control socket"] == 0o600
    assert modes["running: pseudonym key"] == modes["running: extra key"] == 0o600
    assert modes["signing key"] == modes["pseudonym key"] == 0o600
    assert all(v == (0o700 if "dir" in k else 0o600) for k, v in modes.items()), modes
    assert refused and WRONG_PASSWORD not in json.dumps(refused)
    assert lines > 100 and not leaks
