"""Tamper evidence the owner can rely on (issue 11): each hostile change to the ledger or an export, the
refusal it gets, and that nothing the agent accepted is lost on the way.

* Live: the agent publishes its ledger head in the retained status at every connection; kept outside the car,
  it catches a rollback or a rewrite that leaves the ledger consistent in itself.
* Offline, through the real command line: deletions the head alone cannot see, personal-looking values,
  JSON nested 100 000 deep, forged and broken exports.  Never a traceback, always a named reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.export.signing import display_fingerprint, load_or_create_key
from agent.export.writer import ExportContent, write_export
from agent.ledger import Ledger
from agent.ledger_chain import GENESIS, LedgerEntry, canonical, sha256_hex
from agent.uplink.topics import status_filter
from tests.e2e_support import REPO
from tests.reliability.rig import TEST_VIN, AgentProcess, Simulator, live_config, wait_quiet

pytestmark = pytest.mark.reliability

POSITION = "31.230416,121.473701"
DEEP = b"[" * 100_000 + b"]" * 100_000


def cli(*args: str, home: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_CONFIG_HOME": str(home)} if home is not None else None
    result = subprocess.run([sys.executable, "-m", "agent.cli.main", *args], cwd=REPO, capture_output=True,
                            text=True, timeout=60, env=env)
    assert "Traceback" not in result.stderr, result.stderr
    return result


class StatusSniffer:
    """Every status message the broker delivers (retained ones included), across broker restarts."""

    def __init__(self, broker) -> None:
        self.payloads: list[dict] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(0.1, 1.0)
        self.client.on_connect = lambda client, *_: client.subscribe(status_filter("vehicles"), qos=1)
        self.client.on_message = self._message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _message(self, _client, _userdata, message) -> None:
        with self._lock:
            self.payloads.append(json.loads(message.payload))

    def wait_for(self, predicate, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                found = [p for p in self.payloads if predicate(p)]
            if found:
                return found[-1]
            time.sleep(0.1)
        raise AssertionError(f"no such status message within {timeout} s: {self.payloads[-3:]}")

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def anchored_seq(payload: dict) -> int:
    head = ((payload.get("health") or {}).get("anchor") or {}).get("ledger_head") or {}
    return int(head.get("seq") or 0)


def forge_from(ledger_path: Path, seq: int) -> None:
    """Rewrite the chain from ``seq`` on, every hash recomputed, and the head with it: consistent in itself."""
    lines = ledger_path.read_bytes().splitlines()
    entries = [LedgerEntry.from_json(json.loads(line)) for line in lines]
    out = list(lines[:seq - 1])
    prev = sha256_hex(out[-1]) if out else GENESIS
    for entry in entries[seq - 1:]:
        fields = dict(entry.fields)
        if entry.seq == seq:
            fields["signals"] = 0  # "nothing was sent then"
        content = LedgerEntry(entry.seq, entry.time, entry.kind, fields, prev, "").content()
        forged = LedgerEntry(entry.seq, entry.time, entry.kind, fields, prev, sha256_hex(canonical(content)))
        line = canonical(forged.to_json())
        out.append(line)
        prev = sha256_hex(line)
    ledger_path.write_bytes(b"".join(line + b"\n" for line in out))
    ledger_path.with_suffix(".head").write_bytes(canonical({"seq": len(out), "line_sha256": prev}) + b"\n")


def test_the_anchor_on_the_status_topic_catches_what_the_car_alone_cannot(tmp_path, mosquitto, logbook):
    sim = Simulator(logbook, speed="10", name="tamper-sim")
    config = live_config(tmp_path, sim.port, mosquitto.port)
    for category, level in (("vehicle_health", None), ("driving", None), ("location", "round3")):
        result = cli("consent", "grant", category, "--for", "7d", *(["--level", level] if level else []),
                     "--purpose", "fleet statistics", "--config", str(config))
        assert result.returncode == 0, result.stderr
    sniffer = StatusSniffer(mosquitto)
    agent = AgentProcess(config, logbook, name="tamper")
    state = agent.state_dir
    try:
        agent.wait_ready()
        first = sniffer.wait_for(lambda p: p["state"] == "online" and anchored_seq(p) >= 3, timeout=30)
        assert first["health"]["anchor"]["signing_key"].startswith("SHA256:")
        sim.wait(timeout=120)
        wait_quiet(agent, quiet_s=1.0, timeout=30)
        agent.wait_status(lambda s: s["buffer"]["counters"]["pending_batches"] == 0, timeout=60)
        uploads = len([e for e in Ledger.in_dir(state).entries() if e.kind == "upload"])
        assert uploads > 0
        # A reconnection publishes the status again: the anchor now counts the uploads.
        mosquitto.stop()
        mosquitto.start()
        fresh = sniffer.wait_for(lambda p: p["state"] == "online" and anchored_seq(p) >= 3 + uploads, timeout=60)
        report = agent.stop()
        last = sniffer.wait_for(lambda p: p["state"] == "offline", timeout=10)
    finally:
        sim.kill()
        if agent.alive:
            agent.kill()
        sniffer.stop()
    # Nothing accepted is lost: every batch the broker acknowledged is an upload entry of an intact ledger.
    assert report["uplink"]["acked"] == len([e for e in Ledger.in_dir(state).entries() if e.kind == "upload"])
    anchor = tmp_path / "anchor.json"
    anchor.write_text(json.dumps(fresh))
    offline = tmp_path / "offline.json"
    offline.write_text(json.dumps(last))
    ok = cli("ledger", "verify", "--config", str(config), "--against", str(anchor))
    assert ok.returncode == 0 and "ledger matches the anchor" in ok.stdout, ok.stdout + ok.stderr
    refused = cli("ledger", "verify", "--config", str(config), "--against", str(offline))
    assert refused.returncode == 2 and "offline status message carries no ledger head" in refused.stderr
    seq = anchored_seq(fresh)
    original = {name: (state / name).read_bytes() for name in ("ledger.jsonl", "ledger.head")}

    def restore() -> None:
        for name, data in original.items():
            (state / name).write_bytes(data)

    # Rolled back below the anchor, the head rewritten to match: the car says intact, the anchor does not.
    lines = original["ledger.jsonl"].splitlines(keepends=True)
    (state / "ledger.jsonl").write_bytes(b"".join(lines[:seq - 2]))
    (state / "ledger.head").write_bytes(
        canonical({"seq": seq - 2, "line_sha256": sha256_hex(lines[seq - 3].rstrip(b"\n"))}) + b"\n")
    assert cli("ledger", "verify", "--config", str(config)).returncode == 0
    rolled = cli("ledger", "verify", "--config", str(config), "--against", str(anchor))
    assert rolled.returncode == 1 and "rolled back or cut" in rolled.stdout, rolled.stdout
    # Rewritten from an upload on, every hash recomputed: again consistent in itself.
    restore()
    first_upload = next(e.seq for e in Ledger.in_dir(state).entries() if e.kind == "upload")
    forge_from(state / "ledger.jsonl", first_upload)
    assert cli("ledger", "verify", "--config", str(config)).returncode == 0
    rewritten = cli("ledger", "verify", "--config", str(config), "--against", str(anchor))
    assert rewritten.returncode == 1 and f"rewritten: line {seq}" in rewritten.stdout, rewritten.stdout
    # The head deleted with the tail, then both files: damage on the car alone.
    restore()
    (state / "ledger.jsonl").write_bytes(b"".join(lines[:seq - 2]))
    (state / "ledger.head").unlink()
    cut = cli("ledger", "verify", "--config", str(config))
    assert cut.returncode == 1 and "the head file ledger.head is missing (deleted)" in cut.stdout
    (state / "ledger.jsonl").unlink()
    gone = cli("ledger", "verify", "--config", str(config))
    assert gone.returncode == 1 and "the ledger file is missing (deleted)" in gone.stdout
    restore()
    assert cli("ledger", "verify", "--config", str(config), "--against", str(anchor)).returncode == 0


def _export(out: Path, key) -> Path:
    write_export(ExportContent(kind="range", start=1.0, end=2.0, frames=[], samples=[], dbc_paths=[]), out, key)
    return out


def test_hostile_values_json_and_exports_are_refused_and_nothing_accepted_is_lost(tmp_path):
    state = tmp_path / "state"
    home = tmp_path / "home"
    # The owner's purpose looks like a VIN, then like a position: refused at grant time with the reason, nothing
    # granted, nothing of it written anywhere.
    for category, purpose in (("driving", f"insurer, car {TEST_VIN}"), ("charging", f"home {POSITION}")):
        result = cli("consent", "grant", category, "--for", "7d", "--purpose", purpose, "--state", str(state))
        assert result.returncode == 2 and "personal value" in result.stderr, result.stderr
        assert TEST_VIN not in result.stderr and "31.2304" not in result.stderr
    assert not (state / "ledger.jsonl").exists() or not Ledger.in_dir(state).entries()
    for category in ("driving", "charging"):
        result = cli("consent", "grant", category, "--for", "7d", "--purpose", "fleet statistics", "--state",
                     str(state))
        assert result.returncode == 0, result.stderr
    shown = json.loads(cli("consent", "show", "--state", str(state), "--json").stdout)
    assert {row["category"] for row in shown["categories"] if row["state"] == "granted"} == {"driving", "charging"}
    entries = Ledger.in_dir(state).entries()
    assert [(e.fields["category"], e.fields["detail"]["purpose"]) for e in entries] == [
        ("driving", "fleet statistics"), ("charging", "fleet statistics")]
    assert cli("ledger", "verify", "--state", str(state)).returncode == 0
    # A line nested 100 000 deep: named, and the entries before it are still listed.
    good = (state / "ledger.jsonl").read_bytes()
    (state / "ledger.jsonl").write_bytes(good + DEEP + b"\n")
    nested = cli("ledger", "verify", "--state", str(state))
    assert nested.returncode == 1 and "line 3: not a valid ledger entry (nested too deep)" in nested.stdout
    listed = cli("ledger", "--state", str(state))
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 2
    anchor = tmp_path / "anchor.json"
    anchor.write_bytes(DEEP)
    deep_anchor = cli("ledger", "verify", "--state", str(state), "--against", str(anchor))
    assert deep_anchor.returncode == 2 and "nested too deep" in deep_anchor.stderr
    (state / "ledger.jsonl").write_bytes(good)
    # Exports: the vehicle's, a forged one (its own key, signature and manifest), broken ones.
    key = load_or_create_key(state)
    identity = json.loads(cli("identity", "--state", str(state), "--json").stdout)
    assert identity["signing_key"] == display_fingerprint(key) and identity["ledger_head"]["seq"] == 2
    export = _export(tmp_path / "export", key)
    forged = _export(tmp_path / "forged", Ed25519PrivateKey.generate())
    untrusted = cli("export", "verify", str(export), home=home)
    assert untrusted.returncode == 3 and "signature valid, key NOT TRUSTED" in untrusted.stderr
    assert cli("export", "trust", identity["signing_key"], "--name", "my truck", home=home).returncode == 0
    trusted = cli("export", "verify", str(export), home=home)
    assert trusted.returncode == 0 and "trusted (my truck)" in trusted.stdout
    faked = cli("export", "verify", str(forged), home=home)
    assert faked.returncode == 3 and "key NOT TRUSTED" in faked.stderr
    for damage, reason in ((lambda d: (d / "manifest.json.sig").write_bytes(b""), "empty: the export is not signed"),
                           (lambda d: (d / "manifest.json").write_bytes(DEEP), "nested too deep"),
                           (lambda d: (d / "vehicle-public-key.pem").write_bytes(b"x"), "unusable public key")):
        broken = tmp_path / f"broken-{reason[:5]}"
        shutil.copytree(export, broken)
        damage(broken)
        failed = cli("export", "verify", str(broken), home=home)
        assert failed.returncode == 1 and reason in failed.stderr, failed.stderr
    # Nothing accepted was lost along the way: both consent changes, the ledger intact.
    assert len(Ledger.in_dir(state).entries()) == 2
    assert cli("ledger", "verify", "--state", str(state)).returncode == 0
