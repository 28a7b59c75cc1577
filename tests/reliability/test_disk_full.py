"""Disk full (issue 7): a tiny buffer quota, and a small filesystem that really fills.

* Quota: the real pipeline (decode -> collect -> consent -> batch -> store, with the incident recorder) runs
  the bundled log into a buffer far too small for it; every batch the store was given is recorded, and what
  the store kept must be exactly what the documented rule keeps (docs/payload.md, "Quota": lowest priority
  first, then oldest; never_evict streams never), the locked incident snapshots survive on disk and in the
  buffer.
* Full filesystem: `vehicle-agent run` with its state directory on a 6 MB tmpfs that the test fills while
  the agent reads a live replay: it keeps running, counts what it could not store, keeps it for a retry,
  and stores it (incident snapshot included) when space returns.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.buffer.store import BatchStore
from agent.config import load_config
from agent.flow.build import build
from agent.flow.sidecars import Sidecars
from agent.incident.store import IncidentStore
from agent.incident.upload import INCIDENT_STREAM
from agent.sources.log import LogSource
from tests.e2e_support import grant
from tests.helpers.filesystem import fill, small_filesystem
from tests.reliability.rig import (
    BUNDLED_LOG,
    BUS_MAP,
    GRANTS,
    STREAMS_AND_INCIDENTS,
    AgentProcess,
    Simulator,
    assert_decode_balance,
    live_config,
    offline_config,
    wait_quiet,
)

pytestmark = pytest.mark.reliability

QUOTA_MB = 0.03
FILESYSTEM = "6m"


@dataclass(frozen=True)
class Added:
    id: int
    seq: int
    stream: str
    priority: int
    size: int


def run_log_into_store(config_path: Path) -> tuple[list[Added], dict, Sidecars]:
    """The agent's data path and incident recorder over the bundled log; returns every batch given to the store."""
    stages = build(load_config(config_path))
    store, pipeline, sidecars = stages.core.store, stages.path.pipeline, stages.path.sidecars
    added: list[Added] = []
    commit = store.add

    def recording_add(batch):
        batch_id = commit(batch)
        header = batch.header
        added.append(Added(batch_id, header["seq"], header["stream"], header["priority"], len(batch.payload)))
        return batch_id

    store.add = recording_add  # the one store writer calls store.add for the pipeline and the sidecars
    next_poll = None
    for bus, msg in LogSource(BUNDLED_LOG, bus_map=BUS_MAP):
        pipeline.feed(bus, msg)
        if next_poll is None or msg.timestamp >= next_poll:  # the runtime's once-a-second housekeeping
            sidecars.poll(msg.timestamp)
            next_poll = msg.timestamp + 1.0
    pipeline.flush()
    sidecars.flush()
    sidecars.poll(msg.timestamp + 60)
    counters = store.counters()
    store.close()
    return added, counters, sidecars


def documented_eviction(added: list[Added], quota: int, never_evict: frozenset[str]) -> tuple[set[int], int]:
    """docs/payload.md, "Quota": after each add, while over the quota, evict the lowest priority, then the
    oldest (commit order), never a never_evict stream.  Returns the ids kept and the over_quota count."""
    kept: list[Added] = []
    total = over_quota = 0
    for batch in added:
        kept.append(batch)
        total += batch.size
        if total > quota:
            for victim in sorted((b for b in kept if b.stream not in never_evict), key=lambda b: (b.priority, b.id)):
                if total <= quota:
                    break
                kept.remove(victim)
                total -= victim.size
            if total > quota:
                over_quota += 1
    return {b.id for b in kept}, over_quota


def test_tiny_quota_evicts_in_the_documented_order_and_keeps_locked_incidents(tmp_path):
    grant(tmp_path / "state", GRANTS)
    added, counters, sidecars = run_log_into_store(offline_config(tmp_path, QUOTA_MB))
    with BatchStore(tmp_path / "state" / "buffer.sqlite", read_only=True) as store:
        kept = store.pending(10_000)
    quota = int(QUOTA_MB * 1024 * 1024)
    expected_ids, expected_over = documented_eviction(added, quota, frozenset({INCIDENT_STREAM}))
    by_stream = {s: sum(1 for b in added if b.stream == s) for s in ("telemetry", "position", INCIDENT_STREAM)}
    kept_by_stream = {s: sum(1 for b in kept if b.stream == s) for s in by_stream}
    incidents = IncidentStore(tmp_path / "state" / "incidents", create=False).list()
    print(f"\ntiny quota ({quota} bytes): {len(added)} batches given to the store {by_stream} "
          f"({sum(b.size for b in added)} bytes); kept {kept_by_stream} ({counters['pending_bytes']} bytes), "
          f"evicted {counters['evicted']}, over_quota {counters['over_quota']}; incident snapshots "
          f"{sidecars.counters.snapshots}, locked on disk {[i.id for i in incidents]}")
    assert counters["written"] == len(added) == len({b.seq for b in added})
    assert {b.id for b in kept} == expected_ids
    assert counters["evicted"] == len(added) - len(expected_ids) and counters["over_quota"] == expected_over
    # The scenario exercises every rule: the low stream goes first, the higher one is cut to its newest ...
    assert kept_by_stream["telemetry"] < by_stream["telemetry"]
    assert 0 < kept_by_stream["position"] < by_stream["position"]
    newest_position = sorted(b.id for b in added if b.stream == "position")[-kept_by_stream["position"]:]
    assert sorted(b.id for b in kept if b.stream == "position") == newest_position
    # ... and every incident batch survives, as do the `keep` newest snapshots on disk.
    assert kept_by_stream[INCIDENT_STREAM] == by_stream[INCIDENT_STREAM] == 3 == sidecars.counters.snapshots
    assert [i.trigger.name for i in incidents] == ["trip6", "trip10"]
    assert counters["pending_bytes"] == sum(b.size for b in added if b.id in expected_ids)


# -- a filesystem that really fills ---------------------------------------------------------------------------

def read_store(db: Path) -> tuple[int, dict[str, int], int]:
    """Payload bytes and batches per stream as the database holds them, and the sequence numbers handed out."""
    with sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True) as connection:
        total = connection.execute("SELECT COALESCE(SUM(size), 0) FROM batches").fetchone()[0]
        streams = dict(connection.execute("SELECT stream, COUNT(*) FROM batches GROUP BY stream").fetchall())
        # Boot-wide numbers only: per-stream counters ("boot#stream" keys) share the table.
        issued = connection.execute("SELECT COALESCE(SUM(next_seq), 0) FROM sequences "
                                    "WHERE instr(boot_id, '#') = 0").fetchone()[0]
    return total, streams, issued


def test_a_full_filesystem_never_crashes_the_agent_and_it_recovers(tmp_path, logbook):
    with small_filesystem(tmp_path / "fs", FILESYSTEM) as fs:
        state = fs / "state"
        grant(state, GRANTS)
        sim = Simulator(logbook, speed="8", loop=1, name="diskfull-sim")
        # Live timestamps are wall time: at speed 8 a 0.5 s window holds 4 s of the drive (~2000 frames).
        extra = (STREAMS_AND_INCIDENTS.replace("pre_s: 2", "pre_s: 0.5").replace("post_s: 1", "post_s: 0.5")
                 .replace("max_mb: 0.001", "max_mb: 2") + "buffer: {quota_mb: 0.04}\n")
        agent = AgentProcess(live_config(tmp_path, sim.port, batch_age=0.5, extra=extra, state_dir=state), logbook,
                             name="diskfull")
        try:
            agent.wait_ready()
            # Full once the first snapshot (trip1) is on disk; the second (trip6) then meets a full disk.
            agent.wait_status(lambda s: s["sidecars"]["snapshots"] >= 1, timeout=30)
            filler = fill(fs)
            full = agent.wait_status(lambda s: s["sidecars"]["snapshot_errors"] >= 1
                                     and s["pipeline"]["store_errors"] >= 1, timeout=30)
            time.sleep(1.0)
            assert agent.alive
            os.unlink(filler)  # space returns
            recovered = agent.wait_status(
                lambda s: s["pipeline"]["batches_written"] > full["pipeline"]["batches_written"], timeout=30)
            sent = sim.wait(timeout=60)
            wait_quiet(agent, quiet_s=1.0, timeout=30)
            # The snapshot that met the full disk is retried every few seconds until it is saved and stored.
            agent.wait_status(lambda s: s["sidecars"]["snapshots"] == 3 and s["buffer"]["counters"]["written"]
                              == s["pipeline"]["batches_written"], timeout=30)
            report = agent.stop()
        finally:
            sim.kill()
            if agent.alive:
                agent.kill()
        counters = report["buffer"]["counters"]
        pipeline, sidecars = report["pipeline"], report["sidecars"]
        db_bytes, db_streams, issued = read_store(state / "buffer.sqlite")
        snapshots = IncidentStore(state / "incidents", create=False).list()
        leftovers = [p.name for p in (state / "incidents").iterdir() if p.name.startswith(".partial")]
    print(f"\nfull filesystem ({FILESYSTEM} tmpfs): while full: store errors {full['pipeline']['store_errors']}, "
          f"snapshot errors {full['sidecars']['snapshot_errors']}, "
          f"batches written {full['pipeline']['batches_written']}; "
          f"after space returned: batches written {recovered['pipeline']['batches_written']}; at the end: frames "
          f"{pipeline['frames_in']} of {sent.total} sent, batches written {pipeline['batches_written']}, dropped "
          f"{pipeline['batches_dropped']}, sequence numbers issued {issued}, store written {counters['written']}, "
          f"evicted {counters['evicted']}, "
          f"buffered {counters['pending_batches']} {db_streams}; snapshots {[s.trigger.name for s in snapshots]}")
    # It kept running through the full disk and stopped cleanly (stop() asserts exit code 0).
    assert pipeline["frames_in"] == sent.total and not report["dropped_at_bus"]
    assert_decode_balance(pipeline)
    # Every batch refused while full was stored on a retry, or (past the store writer's bound of waiting batches)
    # given up and counted: each sequence number handed out is a stored batch or a counted drop.  The writer
    # counts CAN, incident and camera batches alike: it is their one way into the store.
    assert recovered["pipeline"]["batches_written"] > full["pipeline"]["batches_written"]
    assert counters["written"] == pipeline["batches_written"]
    assert issued == counters["written"] + pipeline["batches_dropped"] + pipeline["batches_waiting"]
    assert pipeline["store_errors"] >= full["pipeline"]["store_errors"] > 0
    # The snapshot that met the full disk was saved when space came back; none was lost or left half-written.
    assert [s.trigger.name for s in snapshots] == ["trip1", "trip6", "trip10"] and not leftovers
    assert db_streams[INCIDENT_STREAM] == sidecars["snapshot_batches"] == 3
    # The quota still holds, and the store's byte count survived the failed commits.
    assert counters["pending_bytes"] == db_bytes and counters["evicted"] > 0
