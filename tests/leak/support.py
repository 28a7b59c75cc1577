"""Shared pieces of the leak suite.

The owner's promise (docs/privacy.md): nothing leaves the car without a live grant, and a revocation deletes
what has not left yet.  Every test runs the real `vehicle-agent run` process and the simulator from the
reliability rig (``tests.reliability.rig``), a real Mosquitto (``tests.broker``) and the reference receiver
in-process.  Beside the receiver a *sniffer* - a second persistent MQTT subscriber - keeps the SHA-256 of
every payload exactly as it arrived, so a received batch can be matched to the ledger's ``upload`` entries
(which hold the SHA-256 of the bytes sent) without trusting the agent's own bookkeeping.

Both subscribers use a persistent session (fixed client id, clean_start false, session expiry) and are
started while the broker is up, so Mosquitto (with persistence on) queues for them whatever the agent
publishes while they reconnect after a broker outage.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.batch.format import BatchError
from agent.batch.reading import decode_envelope
from agent.ledger import Ledger, LedgerEntry
from agent.uplink.topics import data_filter
from tests.e2e_support import run_agent
from tests.reliability.rig import AgentProcess, live_config

# Location in its own stream (one position per batch at a short batch age: gnss_pos is 1 Hz in the bundled
# log, 10 Hz of wall time at the rig's speed 10), driving beside it at a lower priority.
LEAK_COLLECTION = """\
collection:
  default_stream: drop
  campaigns:
    - name: position
      stream: position
      priority: 3
      signals: ["gnss_pos.*"]
    - name: drive
      stream: telemetry
      priority: 0
      signals: ["CCVS1.*", "gnss_imu.*"]
"""
# Batches close after this much data time: below the 0.1 s (wall) between two positions at speed 10.
SHORT_BATCH_AGE = 0.05
LOCATION = "location"


def leak_config(tmp: Path, sim_port: int, broker_port: int | None, *, batch_age: float = SHORT_BATCH_AGE,
                uplink_extra: str = "", extra: str = "", state_dir: Path | None = None) -> Path:
    """The rig's live config (both buses over socketcand, loopback broker) with the leak suite's streams."""
    return live_config(tmp, sim_port, broker_port, batch_age=batch_age, uplink_extra=uplink_extra,
                       extra=LEAK_COLLECTION + extra, state_dir=state_dir)


# -- the agent's command line -----------------------------------------------------------------------------------

def agent_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return run_agent(*args, timeout=timeout)


def grant(config: Path, category: str, level: str | None = None, purpose: str = "leak suite") -> None:
    """`vehicle-agent consent grant` (over the control socket when the agent runs, else on the state files:
    either way the ledger gets its consent_change entry)."""
    args = ["consent", "grant", category, "--for", "7d", "--purpose", purpose, "--config", str(config)]
    if level:
        args += ["--level", level]
    result = agent_cli(*args)
    assert result.returncode == 0, f"grant {category} failed: {result.stdout}{result.stderr}"


@dataclass(frozen=True)
class Revocation:
    category: str
    returncode: int
    output: str
    started: float  # time.time() just before the command ran
    finished: float  # ... and just after it returned


def revoke(config: Path, category: str) -> Revocation:
    started = time.time()
    result = agent_cli("consent", "revoke", category, "--config", str(config))
    return Revocation(category, result.returncode, (result.stdout + result.stderr).strip(), started, time.time())


def ledger_verify(config: Path) -> subprocess.CompletedProcess:
    return agent_cli("ledger", "verify", "--config", str(config))


def ledger_entries(state_dir: Path) -> list[LedgerEntry]:
    """Every readable entry (an unreadable line is skipped; `ledger verify` reports it)."""
    return Ledger.in_dir(state_dir).entries()


def purge_entries(entries: Iterable[LedgerEntry], categories: Iterable[str]) -> list[LedgerEntry]:
    wanted = set(categories)
    return [e for e in entries if e.kind == "purge" and wanted & set(e.fields.get("categories") or ())]


def revocations(entries: Iterable[LedgerEntry], category: str) -> list[LedgerEntry]:
    """The consent_change entries that record the owner revoking ``category``."""
    return [e for e in entries if e.kind == "consent_change" and e.fields.get("change") == "revoke"
            and e.fields.get("category") == category]


def ids_in(entries: Iterable[LedgerEntry], name: str = "batch_ids") -> set:
    return {batch_id for entry in entries for batch_id in entry.fields.get(name) or ()}


def unrecorded_uploads(sniffed: Iterable[Sniffed], uploads: Iterable[LedgerEntry]) -> list[Sniffed]:
    """Messages that left the car whose exact bytes no ``upload`` entry of the ledger names (by SHA-256)."""
    recorded = {entry.fields.get("sha256") for entry in uploads}
    return [message for message in sniffed if message.payload_sha256 not in recorded]


# -- the agent's buffer -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Waiting:
    """A batch waiting in the agent's buffer (buffer.sqlite), read without the agent's help."""

    id: int
    boot_id: str
    seq: int
    stream: str
    categories: frozenset[str]

    @property
    def key(self) -> tuple[str, int]:
        return self.boot_id, self.seq


def buffered(db: Path) -> dict[int, Waiting]:
    """The batches in the buffer now, by store id (a read-only connection beside the running agent)."""
    with sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=10) as connection:
        rows = connection.execute("SELECT id, boot_id, seq, stream, categories FROM batches").fetchall()
    return {row[0]: Waiting(row[0], row[1], row[2], row[3], frozenset(row[4].split(",")) if row[4] else frozenset())
            for row in rows}


# -- what arrived -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Received:
    """One row of the reference receiver's ``batches`` table."""

    boot_id: str
    seq: int
    stream: str
    categories: frozenset[str]
    samples: int
    received: float
    consent_version: int | None
    closed: float | None

    @property
    def key(self) -> tuple[str, int]:
        return self.boot_id, self.seq


def received_batches(receiver: Any) -> list[Received]:
    rows = receiver.store.query("SELECT boot_id, seq, stream, categories, samples, received, consent_version, "
                                "closed FROM batches ORDER BY received")
    return [Received(boot, seq, stream, frozenset(c for c in (categories or "").split(",") if c), int(samples),
                     float(received), None if version is None else int(version), closed)
            for boot, seq, stream, categories, samples, received, version, closed in rows]


def of_categories(batches: Iterable[Any], categories: Iterable[str]) -> list[Any]:
    wanted = set(categories)
    return [b for b in batches if wanted & set(b.categories)]


def samples_of(batches: Iterable[Received]) -> int:
    return sum(b.samples for b in batches)


@dataclass(frozen=True)
class Sniffed:
    topic: str
    received: float
    header: dict
    payload_sha256: str

    @property
    def key(self) -> tuple:
        """What names a batch: boot, store epoch (when the agent sends one) and boot-wide sequence number."""
        return self.header.get("boot_id"), self.header.get("store_epoch"), self.header.get("seq")

    @property
    def categories(self) -> frozenset[str]:
        return frozenset(self.header.get("categories") or ())


@dataclass
class Sniffer:
    """A persistent QoS 1 subscriber to every data topic that keeps the payload hash of each message."""

    host: str
    port: int
    prefix: str = "vehicles"
    client_id: str = field(default_factory=lambda: f"leak-sniffer-{uuid.uuid4().hex[:10]}")

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: list[Sniffed] = []
        self._subscribed = threading.Event()
        client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5)
        client.reconnect_delay_set(0.1, 1.0)
        client.on_connect = lambda c, _u, _f, code, _p: None if code.is_failure else c.subscribe(
            data_filter(self.prefix), qos=1)
        client.on_subscribe = lambda _c, _u, _m, _codes, _p: self._subscribed.set()
        client.on_message = self._on_message
        self._client = client

    def start(self, timeout: float = 10.0) -> Sniffer:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 3600
        self._client.connect(self.host, self.port, keepalive=30, clean_start=False, properties=properties)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            raise TimeoutError(f"sniffer: no subscription on {self.host}:{self.port}")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        payload = bytes(message.payload)
        try:
            header, _ = decode_envelope(payload)
        except BatchError:
            header = {}
        item = Sniffed(message.topic, time.time(), header, hashlib.sha256(payload).hexdigest())
        with self._lock:
            self._messages.append(item)

    def messages(self) -> list[Sniffed]:
        with self._lock:
            return list(self._messages)


# -- waiting --------------------------------------------------------------------------------------------------------

def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def written(status: dict) -> int:
    return status["buffer"]["counters"]["written"]


def settle(agent: AgentProcess, quiet_s: float = 1.5, timeout: float = 30) -> dict:
    """Until the agent committed no new batch for ``quiet_s`` (after the simulator finished: the batcher's
    open batches are closed by the once-a-second housekeeping)."""
    deadline = time.monotonic() + timeout
    status = agent.status()
    last, since = written(status), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        status = agent.status()
        if written(status) != last:
            last, since = written(status), time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return status
    raise AssertionError(f"the agent kept writing batches for {timeout} s")


def drained(status: dict) -> bool:
    return status["buffer"]["counters"]["pending_batches"] == 0 and status["uplink"]["in_flight"] == 0


def wait_drained(agent: AgentProcess, timeout: float) -> tuple[bool, dict]:
    """Until the buffer is empty and nothing is in flight; (False, last status) on timeout (no raise: the
    test goes on and reports its counts)."""
    deadline = time.monotonic() + timeout
    while True:
        status = agent.status()
        if drained(status):
            return True, status
        if time.monotonic() > deadline or not agent.alive:
            return False, status
        time.sleep(0.2)


def wait_uplink_idle(agent: AgentProcess, quiet_s: float, timeout: float) -> dict:
    """Until the uplink handed no batch to MQTT for ``quiet_s`` and nothing is in flight."""
    deadline = time.monotonic() + timeout
    status = agent.status()
    last, since = status["uplink"]["sent"], time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        status = agent.status()
        if status["uplink"]["sent"] != last or status["uplink"]["in_flight"]:
            last, since = status["uplink"]["sent"], time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return status
    return status


# -- expectations ---------------------------------------------------------------------------------------------------

class Expectations:
    """Checks every expectation of a test and fails once, naming each one that does not hold, with the
    counts measured (so one run shows the whole picture, not only the first broken promise)."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.failed: list[str] = []
        self.facts: dict[str, Any] = {}

    def note(self, **facts: Any) -> None:
        self.facts.update(facts)

    def check(self, ok: bool, text: str) -> bool:
        if not ok:
            self.failed.append(text)
        return ok

    def verify(self) -> None:
        facts = "\n".join(f"  {name}: {value}" for name, value in self.facts.items())
        print(f"\n{self.title}\n{facts}")
        assert not self.failed, (f"{self.title}: {len(self.failed)} expectation(s) broken:\n  - "
                                 + "\n  - ".join(self.failed) + f"\nmeasured:\n{facts}")
