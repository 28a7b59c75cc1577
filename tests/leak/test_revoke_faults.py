"""A revocation must delete what has not left the car, whatever else is wrong at that moment.

Each test builds a backlog of granted batches in the real `vehicle-agent run` process (the simulator serves
the bundled log over socketcand), breaks one thing, revokes over the control socket with `vehicle-agent
consent revoke`, lets the uplink drain to a real Mosquitto and counts what the reference receiver (and a
sniffer beside it) got of the revoked categories after the revoke: it must be nothing.

a) the ledger's last line is torn (a power cut while it was written);
b) the state filesystem is full, so the ledger cannot be written;
c) the uplink paces its sending (``byte_rate_limit``) and holds batches it took from the store;
d) incident snapshot and camera event batches wait beside telemetry.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simulator.broker import free_loopback_port
from simulator.scenario import build_scenario, write_event
from tests.broker import MosquittoBroker
from tests.e2e_support import REPO
from tests.helpers.filesystem import fill, small_filesystem
from tests.leak.support import (
    LOCATION,
    Expectations,
    buffered,
    grant,
    ids_in,
    leak_config,
    ledger_entries,
    ledger_verify,
    of_categories,
    purge_entries,
    received_batches,
    revocations,
    revoke,
    samples_of,
    settle,
    unrecorded_uploads,
    wait_drained,
    wait_uplink_idle,
)
from tests.reliability.rig import AgentProcess, LogBook, Simulator, wait_quiet

pytestmark = [pytest.mark.leak, pytest.mark.slow]

# What a power cut leaves of an entry being appended: no newline, not JSON.
TORN = b'{"seq": 99, "ti'


def start_agent(config: Path, logbook: LogBook, name: str, cleanup: contextlib.ExitStack) -> AgentProcess:
    agent = AgentProcess(config, logbook, name=name)
    cleanup.callback(lambda: agent.kill() if agent.alive else None)
    agent.wait_ready()
    return agent


def start_simulator(logbook: LogBook, name: str, cleanup: contextlib.ExitStack, **options) -> Simulator:
    sim = Simulator(logbook, name=name, **options)
    cleanup.callback(sim.kill)
    return sim


def backlog_while_offline(tmp_path: Path, logbook: LogBook, broker: MosquittoBroker, name: str,
                          cleanup: contextlib.ExitStack, *, uplink_extra: str = "", extra: str = "",
                          state_dir: Path | None = None) -> tuple[Path, AgentProcess, dict]:
    """Broker down; location (round3) and driving granted; one pass of the bundled log into the buffer.
    Returns the config, the running agent and its status once it stopped writing."""
    broker.stop()  # the dead zone: nothing can leave while the backlog builds
    sim = start_simulator(logbook, f"{name}-sim", cleanup)
    config = leak_config(tmp_path, sim.port, broker.port, uplink_extra=uplink_extra, extra=extra,
                         state_dir=state_dir)
    # Granted on the state files before the agent starts (the ledger gets the consent_change entries).
    grant(config, LOCATION, "round3")
    grant(config, "driving")
    agent = start_agent(config, logbook, name, cleanup)
    sim.wait(timeout=90)
    wait_quiet(agent, quiet_s=1.0, timeout=30)
    return config, agent, settle(agent)


def moved_aside(state: Path, data: bytes) -> list[str]:
    """Files under the state directory, other than the ledger itself, that hold ``data``."""
    found = []
    for path in sorted(state.rglob("*")):
        if path.is_file() and path.name != "ledger.jsonl" and not path.name.startswith("buffer.sqlite"):
            with contextlib.suppress(OSError):
                if data in path.read_bytes():
                    found.append(str(path.relative_to(state)))
    return found


def test_revoke_with_a_torn_ledger_tail_purges_the_backlog_and_repairs_the_ledger(
        tmp_path, logbook, mosquitto, subscribers, cleanup):
    receiver, sniffer = subscribers
    state = tmp_path / "state"
    config, agent, _ = backlog_while_offline(tmp_path, logbook, mosquitto, "torn", cleanup)
    waiting = buffered(state / "buffer.sqlite")
    location_ids = {i for i, b in waiting.items() if LOCATION in b.categories}
    assert len(location_ids) >= 100, f"the scenario needs a location backlog: {len(location_ids)} batches"
    ledger = state / "ledger.jsonl"
    intact = ledger.read_bytes()
    assert intact.endswith(b"\n") and ledger_verify(config).returncode == 0
    with open(ledger, "ab") as handle:  # a power cut in the middle of an append
        handle.write(TORN)

    revocation = revoke(config, LOCATION)
    granted_after = agent.status()["consent"]["granted"]
    left = buffered(state / "buffer.sqlite")
    mosquitto.start()
    drained, _ = wait_drained(agent, timeout=60)
    receiver.wait_quiet(1.0, timeout=10)
    report = agent.stop()
    verified = ledger_verify(config)
    entries = ledger_entries(state)
    got = received_batches(receiver)
    sniffed = sniffer.messages()

    counters = report["buffer"]["counters"]
    location_got = of_categories(got, [LOCATION])
    after_revoke = [b for b in location_got if b.received >= revocation.started]
    purges = purge_entries(entries, [LOCATION])
    repairs = [e for e in entries if e.kind == "ledger_repair"]
    uploads = [e for e in entries if e.kind == "upload"]
    unrecorded = unrecorded_uploads(sniffed, uploads)
    aside = moved_aside(state, TORN)
    check = Expectations("revoke with a torn ledger tail")
    check.note(waiting_before_revoke={"location": len(location_ids), "all": len(waiting)},
               revoke=f"exit {revocation.returncode}: {revocation.output[-300:]}",
               granted_after_revoke=granted_after,
               location_waiting_after_revoke=len(of_categories(left.values(), [LOCATION])),
               received={"batches": len(got), "location_batches": len(location_got),
                         "location_samples": samples_of(location_got),
                         "location_samples_after_revoke": samples_of(after_revoke),
                         "sniffed_messages": len(sniffed), "without_upload_entry": len(unrecorded),
                         "duplicates": receiver.store.counter("duplicates")},
               agent_counters={k: counters[k] for k in ("written", "delivered", "purged", "pending_batches")},
               drained=drained, ledger_kinds=sorted({e.kind for e in entries}),
               ledger={"purge_entries_for_location": len(purges), "purged_ids": len(ids_in(purges)),
                       "uploads": len(uploads), "ledger_repair": [e.fields for e in repairs][:3],
                       "torn_bytes_kept_in": aside},
               verify=f"exit {verified.returncode}: {(verified.stdout + verified.stderr).strip()[-300:]}")
    check.check(revocation.returncode == 0, f"the revoke command failed (exit {revocation.returncode})")
    check.check(LOCATION not in granted_after, "location is still granted after the revoke")
    check.check(not of_categories(left.values(), [LOCATION]),
                f"{len(of_categories(left.values(), [LOCATION]))} location batches still waiting after the revoke")
    check.check(not after_revoke, f"{len(after_revoke)} location batches ({samples_of(after_revoke)} samples) "
                                  "reached the receiver after the revoke")
    check.check(bool(revocations(entries, LOCATION)), "the ledger has no consent_change entry for the revoke")
    check.check(bool(purges) and location_ids <= ids_in(purges),
                f"no purge entry lists the {len(location_ids)} waiting location batches "
                f"({len(location_ids - ids_in(purges))} missing)")
    check.check(drained and counters["delivered"] == counters["written"] - counters["purged"],
                "delivered != committed - purged (or the backlog never drained)")
    check.check(len(got) == counters["delivered"], f"receiver holds {len(got)} batches, agent delivered "
                                                   f"{counters['delivered']}")
    check.check(not unrecorded, f"{len(unrecorded)} of {len(sniffed)} batches that left the car have no upload "
                                f"entry in the ledger ({len(uploads)} upload entries)")
    check.check(verified.returncode == 0, "`vehicle-agent ledger verify` fails after the revoke")
    check.check(ledger.read_bytes().startswith(intact), "the ledger's intact entries were rewritten")
    check.check(bool(repairs), "no ledger_repair entry records the torn tail")
    check.check(bool(aside), "the torn bytes were not kept anywhere (moved aside) in the state directory")
    check.verify()


# -- b) a full state filesystem -----------------------------------------------------------------------------------

FILESYSTEM = "32m"
WINDOW = 4  # uplink.in_flight: at most this many batches can be on their way when the ledger starts failing
FULL_FOR_S = 8.0  # how long the broker is reachable while the disk stays full


def cannot_write(directory: Path) -> bool:
    """True when one more byte in a new page is refused (what the ledger's next entry needs once its file ends
    on a page boundary)."""
    probe = directory / "probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError:
        return True
    try:
        os.write(fd, b"x")
        return False
    except OSError:
        return True
    finally:
        os.close(fd)
        probe.unlink()


def align_ledger_to_a_page(agent: AgentProcess, state: Path, page: int, attempts: int = 400) -> tuple[int, int]:
    """Harmless consent changes over the control socket until the ledger ends exactly on a page boundary - its
    next entry needs a new page, which a full tmpfs refuses (with slack left in its last page a short write
    would tear the line instead) - while consent.jsonl keeps room in its last page for the revocation's line
    (the revocation itself must be recordable: it is the *ledger* this test makes unwritable).

    Re-granting vehicle_health with a purpose of a chosen length steps the ledger onto the boundary; a grant of
    charging with a purpose of another length changes how much every later consent.jsonl line carries, when
    the boundary is reached but consent.jsonl would have too little room.  Returns (ledger size, consent slack).
    """
    from agent.control import ControlClient

    ledger, consent = state / "ledger.jsonl", state / "consent.jsonl"
    client = ControlClient(agent.control_socket, timeout=10)
    rng = random.Random(7)
    base = 400  # bytes of a consent_change entry besides its purpose; measured at every step
    for _ in range(attempts):
        size = ledger.stat().st_size
        consent_size = consent.stat().st_size
        last_line = len(consent.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[-1])
        slack = -consent_size % page
        if size % page == 0:
            if slack >= last_line + 256:
                return size, slack
            client.call("consent.grant", category="charging", expiry="7d", level=None,
                        purpose="c" * rng.randint(1, 200))
            continue
        room = -size % page  # bytes to the next page boundary
        if not (base < room <= base + 200 or room >= 2 * base + 2):
            room += page  # no sequence of entries ends on this boundary: aim at the next one
        # One entry onto the boundary when it is in reach, else one that leaves it in reach of the next.
        purpose = room - base if room <= base + 200 else min(200, max(1, room - 2 * base - 100))
        client.call("consent.grant", category="vehicle_health", expiry="7d", level=None, purpose="p" * purpose)
        base = ledger.stat().st_size - size - purpose
    raise AssertionError(f"could not align the ledger on a page boundary in {attempts} consent changes")


def test_revoke_on_a_full_state_disk_purges_and_nothing_leaves_unrecorded(
        tmp_path, logbook, mosquitto, subscribers, cleanup):
    receiver, sniffer = subscribers
    fs = cleanup.enter_context(small_filesystem(tmp_path / "fs", FILESYSTEM))
    state = fs / "state"
    config, agent, _ = backlog_while_offline(tmp_path, logbook, mosquitto, "diskfull", cleanup,
                                             uplink_extra=f"  in_flight: {WINDOW}", state_dir=state)
    waiting = buffered(state / "buffer.sqlite")
    location_ids = {i for i, b in waiting.items() if LOCATION in b.categories}
    assert len(location_ids) >= 100, f"the scenario needs a location backlog: {len(location_ids)} batches"
    page = os.statvfs(fs).f_bsize
    ledger_size, consent_slack = align_ledger_to_a_page(agent, state, page)
    entries_before = len(ledger_entries(state))
    filler = fill(fs)
    assert cannot_write(fs), "the filesystem still takes writes after filling it"

    revocation = revoke(config, LOCATION)
    granted_after = agent.status()["consent"]["granted"]
    left = buffered(state / "buffer.sqlite")
    mosquitto.start()
    time.sleep(FULL_FOR_S)  # the broker is back, the disk is still full
    receiver.wait_quiet(0.5, timeout=5)
    while_full = received_batches(receiver)
    uploads_while_full = [e for e in ledger_entries(state) if e.kind == "upload"]
    alive_while_full = agent.alive
    os.unlink(filler)  # space returns
    drained, status = wait_drained(agent, timeout=30)
    receiver.wait_quiet(1.0, timeout=10)
    report = agent.stop() if agent.alive else {"buffer": {"counters": status["buffer"]["counters"]}}
    verified = ledger_verify(config)
    entries = ledger_entries(state)
    got = received_batches(receiver)
    sniffed = sniffer.messages()

    counters = report["buffer"]["counters"]
    location_got = of_categories(got, [LOCATION])
    purges = purge_entries(entries, [LOCATION])
    uploads = [e for e in entries if e.kind == "upload"]
    unrecorded = unrecorded_uploads(sniffed, uploads)
    check = Expectations("revoke on a full state disk")
    check.note(waiting_before_revoke={"location": len(location_ids), "all": len(waiting)},
               aligned={"ledger_bytes": ledger_size, "page": page, "consent_slack": consent_slack,
                        "ledger_entries": entries_before},
               revoke=f"exit {revocation.returncode}: {revocation.output[-300:]}",
               granted_after_revoke=granted_after,
               location_waiting_after_revoke=len(of_categories(left.values(), [LOCATION])),
               while_full={"received_batches": len(while_full),
                           "location_batches": len(of_categories(while_full, [LOCATION])),
                           "ledger_uploads": len(uploads_while_full), "agent_alive": alive_while_full},
               received={"batches": len(got), "location_batches": len(location_got),
                         "location_samples": samples_of(location_got), "sniffed_messages": len(sniffed),
                         "without_upload_entry": len(unrecorded),
                         "duplicates": receiver.store.counter("duplicates")},
               agent_counters={k: counters[k] for k in ("written", "delivered", "purged", "pending_batches")},
               drained=drained, ledger_kinds=sorted({e.kind for e in entries}),
               ledger={"purge_entries_for_location": len(purges), "purged_ids": len(ids_in(purges)),
                       "uploads": len(uploads)},
               verify=f"exit {verified.returncode}: {(verified.stdout + verified.stderr).strip()[-300:]}")
    check.check(LOCATION not in granted_after, "location is still granted after the revoke")
    check.check(not location_got, f"{len(location_got)} location batches ({samples_of(location_got)} samples) "
                                  "reached the receiver after the revoke")
    check.check(len(while_full) <= WINDOW, f"{len(while_full)} batches left the car while the ledger could not be "
                                           f"written (at most the in-flight window of {WINDOW} may)")
    check.check(bool(revocations(entries, LOCATION)), "the ledger has no consent_change entry for the revoke, "
                                                      "even once space returned")
    check.check(bool(purges) and location_ids <= ids_in(purges),
                f"no purge entry lists the {len(location_ids)} waiting location batches "
                f"({len(location_ids - ids_in(purges))} missing)")
    check.check(drained and counters["delivered"] == counters["written"] - counters["purged"],
                "delivered != committed - purged (or the backlog never drained once space returned)")
    check.check(len(got) == counters["delivered"], f"receiver holds {len(got)} batches, agent delivered "
                                                   f"{counters['delivered']}")
    check.check(not unrecorded, f"{len(unrecorded)} of {len(sniffed)} batches that left the car have no upload "
                                "entry in the ledger")
    check.check(verified.returncode == 0, "`vehicle-agent ledger verify` fails once space returned")
    check.verify()


# -- c) a paced upload -----------------------------------------------------------------------------------------

RATE = 1500  # uplink.byte_rate_limit, bytes/s: a location batch is ~450 bytes, so ~3 batches a second
IN_FLIGHT = 16  # the default window; the paced sender takes up to this many batches from the store at once


def test_revoke_during_a_paced_upload_sends_nothing_of_the_revoked_category(
        tmp_path, logbook, mosquitto, subscribers, cleanup):
    receiver, sniffer = subscribers
    state = tmp_path / "state"
    sim = start_simulator(logbook, "paced-sim", cleanup)
    config = leak_config(tmp_path, sim.port, mosquitto.port,
                         uplink_extra=f"  byte_rate_limit: {RATE}\n  in_flight: {IN_FLIGHT}")
    grant(config, LOCATION, "round3")
    agent = start_agent(config, logbook, "paced", cleanup)
    sim.wait(timeout=90)
    wait_quiet(agent, quiet_s=1.0, timeout=30)
    before = settle(agent)
    # The whole pass is in the buffer or already sent; the uplink is still pacing through it.
    waiting = buffered(state / "buffer.sqlite")
    location_ids = {i for i, b in waiting.items() if LOCATION in b.categories}
    id_of = {b.key: i for i, b in waiting.items()}
    sent_before = before["uplink"]["sent"]
    assert len(location_ids) >= 40 and sent_before >= 5, \
        f"the scenario needs a paced location backlog: {len(location_ids)} waiting, {sent_before} sent"

    revocation = revoke(config, LOCATION)
    version = agent.status()["consent"]["version"]
    # Until the sender handed nothing to MQTT for 3 s: it has let go of whatever it held at the revoke.
    wait_uplink_idle(agent, quiet_s=3.0, timeout=30)
    receiver.wait_quiet(1.0, timeout=10)
    report = agent.stop()
    entries = ledger_entries(state)
    got = received_batches(receiver)
    sniffed = sniffer.messages()
    verified = ledger_verify(config)

    counters = report["buffer"]["counters"]
    purges = [e for e in purge_entries(entries, [LOCATION]) if e.time >= revocation.started - 1]
    purge_seq = min((e.seq for e in purges), default=None)
    purged = ids_in(purges)
    may_have_left = ids_in(e for e in entries if e.kind == "may_have_left")
    # What the ledger says left before the purge: the SHA-256 of every payload acknowledged until then.
    uploaded_before = {e.fields.get("sha256") for e in entries if e.kind == "upload"
                       and (e.seq < purge_seq if purge_seq is not None else e.time < revocation.started)}
    sha_of: dict[tuple, set[str]] = {}
    for message in sniffed:
        sha_of.setdefault((message.header.get("boot_id"), message.header.get("seq")), set()).add(
            message.payload_sha256)
    location_got = of_categories(got, [LOCATION])
    recorded = [b for b in location_got if sha_of.get(b.key, set()) & uploaded_before]
    announced = [b for b in location_got if b not in recorded and id_of.get(b.key) in may_have_left]
    leaked = [b for b in location_got if b not in recorded and b not in announced]
    # When the purge entry was written (the store purge comes just before it): a leaked batch that arrived
    # earlier left before the revocation but the ledger lists it as neither uploaded nor may_have_left; one
    # that arrived later was sent after its purge.
    purge_time = min((e.time for e in purges), default=revocation.finished)
    sent_after_purge = [b for b in leaked if b.received > purge_time]
    purged_but_arrived = [b for b in location_got if id_of.get(b.key) in purged - may_have_left]
    late = [b for b in location_got if b.received > revocation.finished + 0.5]
    newer = [b for b in location_got if b.consent_version is not None and b.consent_version >= version]
    delivered_before = location_ids - purged  # waiting at the snapshot, acknowledged before the purge
    check = Expectations("revoke during a paced upload")
    check.note(rate=f"{RATE} bytes/s, window {IN_FLIGHT}",
               at_revoke={"location_waiting": len(location_ids), "sent_before": sent_before},
               revoke=f"exit {revocation.returncode} in {revocation.finished - revocation.started:.2f} s: "
                      f"{revocation.output[-200:]}",
               received={"location_batches": len(location_got), "location_samples": samples_of(location_got),
                         "with_upload_entry_before_purge": len(recorded),
                         "listed_may_have_left": len(announced),
                         "leaked_batches": len(leaked), "leaked_samples": samples_of(leaked),
                         "leaked_arriving_after_the_purge_entry": len(sent_after_purge),
                         "leaked_arrival_minus_purge_s": sorted(round(b.received - purge_time, 2) for b in leaked),
                         "purged_ids_that_arrived": len(purged_but_arrived),
                         "location_samples_received_0.5s_after_revoke": samples_of(late),
                         "late_batches": len(late), "under_the_new_consent_version": len(newer),
                         "sniffed_messages": len(sniffed)},
               ledger={"purge_entries": len(purges), "purged_ids": len(purged), "may_have_left": len(may_have_left),
                       "uploads": sum(1 for e in entries if e.kind == "upload")},
               agent_counters={k: counters[k] for k in ("written", "delivered", "purged", "pending_batches")},
               uplink={k: report["uplink"][k] for k in ("sent", "acked", "forgotten", "resent")},
               verify=f"exit {verified.returncode}")
    check.check(revocation.returncode == 0, f"the revoke command failed (exit {revocation.returncode})")
    check.check(not leaked, f"{len(leaked)} location batches ({samples_of(leaked)} samples) reached the receiver "
                            "without an upload entry from before the purge and without a may_have_left entry "
                            f"({len(sent_after_purge)} of them arrived after the purge entry was written)")
    check.check(not purged_but_arrived, f"{len(purged_but_arrived)} batches the ledger lists as purged (and not as "
                                        "may_have_left) reached the receiver")
    check.check(not late, f"{len(late)} location batches ({samples_of(late)} samples) reached the receiver more "
                          "than 0.5 s after the revoke returned")
    check.check(not newer, f"{len(newer)} location batches carry the consent version of the revocation or later")
    check.check(len(may_have_left) <= IN_FLIGHT, f"{len(may_have_left)} batches may have left: more than the "
                                                 f"window of {IN_FLIGHT}")
    check.check(bool(purges) and location_ids - delivered_before <= purged, "the purge misses waiting batches")
    check.check(counters["pending_batches"] == 0
                and counters["delivered"] + counters["purged"] == counters["written"],
                "delivered + purged != committed")
    check.check(len(got) == counters["delivered"] + len(announced),
                f"receiver holds {len(got)} batches; the agent delivered {counters['delivered']} and "
                f"{len(announced)} may have left")
    check.check(verified.returncode == 0, "`vehicle-agent ledger verify` fails")
    check.verify()


# -- d) incident snapshots and camera events waiting -----------------------------------------------------------

INCIDENT_AND_CAMERA = """\
incidents:
  pre_s: 2
  post_s: 1
  camera_triggers: []
  triggers:
    - {name: hard_decel, when: "Vehicle.Acceleration.Longitudinal <= -7"}
camera:
  socket: ""
  poll_interval_s: 0.2
"""
REVOKED = ("incident", "camera", LOCATION)


class ScenarioDrive:
    """`vehicle-sim scenario hard-brake --to socketcand://127.0.0.1:PORT --per-bus` as its own process: 60 s of
    drive with a hard brake at 40 s, on channels can0 (truck) and can1 (gps), at ``speed``."""

    def __init__(self, book: LogBook, speed: str = "10", name: str = "scenario") -> None:
        self.port = free_loopback_port()
        self.stdout_path = book.path(name, ".out")
        self.stderr_path = book.path(name, ".log")
        self._stdout = open(self.stdout_path, "w")
        self._stderr = open(self.stderr_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "simulator.cli", "scenario", "hard-brake", "--to",
             f"socketcand://127.0.0.1:{self.port}", "--per-bus", "--speed", speed, "--wait-clients", "2"],
            cwd=REPO, stdout=self._stdout, stderr=self._stderr, text=True)
        deadline = time.monotonic() + 30
        while "listening on" not in self.stderr_path.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"scenario did not start: {self.stderr_path.read_text()}")
            time.sleep(0.02)

    def wait(self, timeout: float) -> None:
        code = self.process.wait(timeout)
        self.close()
        assert code == 0, f"scenario failed ({code}): {self.stderr_path.read_text()[-2000:]}"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._stdout.close()
        self._stderr.close()


def drive_config(tmp_path: Path, sim_port: int, broker_port: int) -> Path:
    config = leak_config(tmp_path, sim_port, broker_port, extra=INCIDENT_AND_CAMERA)
    text = config.read_text()
    assert "channel: truck," in text and "channel: gps," in text
    config.write_text(text.replace("channel: truck,", "channel: can0,").replace("channel: gps,", "channel: can1,"))
    return config


def drop_camera_records(spool: Path) -> int:
    """The scenario's four camera records (front hard_brake with plates, front collision anonymised, cabin
    collision, rear sentry), dated in the last minute, dropped into the spool as a camera system does."""
    events = build_scenario("hard-brake", seed=0, start_time=time.time() - 60).events
    spool.mkdir(parents=True, exist_ok=True)
    for event in events:
        write_event(event, spool)
    return len(events)


def test_revoke_while_incident_and_camera_batches_wait_purges_them_all(
        tmp_path, logbook, mosquitto, subscribers, cleanup):
    receiver, sniffer = subscribers
    state = tmp_path / "state"
    mosquitto.stop()  # the dead zone
    drive = ScenarioDrive(logbook, name="incident-scenario")
    cleanup.callback(drive.close)
    config = drive_config(tmp_path, drive.port, mosquitto.port)
    for category, level in (("incident", None), ("camera", None), (LOCATION, "round3"), ("driving", None)):
        grant(config, category, level)
    agent = start_agent(config, logbook, "incident", cleanup)
    agent.wait_status(lambda s: s["sidecars"]["snapshot_batches"] >= 1, timeout=60)
    records = drop_camera_records(state / "camera" / "spool")
    drive.wait(timeout=60)
    agent.wait_status(lambda s: s["sidecars"]["camera_events"] >= records, timeout=30)
    wait_quiet(agent, quiet_s=1.0, timeout=30)
    before = settle(agent)
    waiting = buffered(state / "buffer.sqlite")
    by_category = {c: {i for i, b in waiting.items() if c in b.categories} for c in REVOKED}
    streams = {s: sum(1 for b in waiting.values() if b.stream == s) for s in ("incident", "camera", "position")}
    assert by_category["incident"] and by_category["camera"] and by_category[LOCATION], \
        f"the scenario needs incident, camera and location batches waiting: {streams}"

    revocations = [revoke(config, category) for category in REVOKED]
    left = buffered(state / "buffer.sqlite")
    mosquitto.start()
    drained, _ = wait_drained(agent, timeout=60)
    receiver.wait_quiet(1.0, timeout=10)
    report = agent.stop()
    entries = ledger_entries(state)
    got = received_batches(receiver)
    sniffed = sniffer.messages()
    verified = ledger_verify(config)

    counters = report["buffer"]["counters"]
    first_revoke = min(r.started for r in revocations)
    forbidden = [b for b in of_categories(got, REVOKED) if b.received >= first_revoke]
    forbidden_streams = {s: sum(1 for b in forbidden if b.stream == s) for s in {b.stream for b in forbidden}}
    purged = {c: ids_in(purge_entries(entries, [c])) for c in REVOKED}
    uploads = [e for e in entries if e.kind == "upload"]
    unrecorded = unrecorded_uploads(sniffed, uploads)
    check = Expectations("revoke while incident and camera batches wait")
    check.note(waiting_before_revoke={**{c: len(ids) for c, ids in by_category.items()}, "streams": streams,
                                      "all": len(waiting)},
               sidecars={k: before["sidecars"][k] for k in ("snapshots", "snapshot_batches", "camera_events",
                                                            "camera_uploaded", "camera_kept_in_car")},
               revokes={r.category: f"exit {r.returncode}" for r in revocations},
               waiting_after_revoke={c: len(of_categories(left.values(), [c])) for c in REVOKED},
               received={"batches": len(got), "revoked_category_batches": len(forbidden),
                         "revoked_category_samples": samples_of(forbidden), "by_stream": forbidden_streams,
                         "sniffed_messages": len(sniffed), "without_upload_entry": len(unrecorded)},
               ledger={c: f"{len(by_category[c] & set().union(*purged.values()))} of {len(by_category[c])} purged"
                       for c in REVOKED},
               agent_counters={k: counters[k] for k in ("written", "delivered", "purged", "pending_batches")},
               drained=drained, verify=f"exit {verified.returncode}")
    for revocation in revocations:
        check.check(revocation.returncode == 0, f"revoke {revocation.category} failed: {revocation.output[-200:]}")
    check.check(not of_categories(left.values(), REVOKED),
                f"{len(of_categories(left.values(), REVOKED))} incident/camera/location batches still waiting after "
                "the revokes")
    check.check(not forbidden, f"{len(forbidden)} incident/camera/location batches ({samples_of(forbidden)} samples, "
                               f"{forbidden_streams}) reached the receiver after the revoke")
    for category in REVOKED:
        # A batch of two revoked categories (an incident with positions) is purged by the first revoke.
        missing = by_category[category] - set().union(*purged.values())
        check.check(not missing, f"{len(missing)} waiting {category} batches are in no purge entry")
    check.check(drained and counters["delivered"] == counters["written"] - counters["purged"],
                "delivered != committed - purged (or the backlog never drained)")
    check.check(len(got) == counters["delivered"], f"receiver holds {len(got)} batches, agent delivered "
                                                   f"{counters['delivered']}")
    check.check(not unrecorded, f"{len(unrecorded)} of {len(sniffed)} batches that left the car have no upload "
                                f"entry in the ledger ({len(uploads)} upload entries)")
    check.check(verified.returncode == 0, "`vehicle-agent ledger verify` fails")
    check.verify()
