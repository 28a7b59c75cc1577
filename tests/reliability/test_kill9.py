"""kill -9 of the agent, 20 times at random moments while it reads a live replay and uploads (issue 7).

Frames sent while the agent is dead are never seen, so the check is on what was committed: the store
numbers batches (boot_id, seq) contiguously and durably, so after a final clean run has drained the
backlog the receiver must hold every seq 0..N-1 exactly once, N being the store's persistent `written`.
"""

from __future__ import annotations

import random
import sqlite3
import time

import pytest

from agent.buffer.store import BatchStore
from simulator.receiver.client import Receiver
from tests.e2e_support import grant
from tests.reliability.rig import (
    GRANTS,
    AgentProcess,
    Simulator,
    assert_decode_balance,
    assert_store_balance,
    live_config,
    wait_quiet,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

KILLS = 20
# A byte-rate limit below the data rate keeps a backlog and a full in-flight window at every kill.
SLOW_UPLINK = "  byte_rate_limit: 2000\n  in_flight: 4"


def receiver_seqs(db) -> list[int]:
    with sqlite3.connect(db) as connection:
        return [row[0] for row in connection.execute("SELECT seq FROM batches ORDER BY seq")]


def store_counters(buffer) -> dict:
    with BatchStore(buffer, read_only=True) as store:
        return store.counters()


def test_twenty_kill_9_lose_no_committed_batch(tmp_path, mosquitto, logbook):
    rng = random.Random(7)
    state = tmp_path / "state"
    buffer = state / "buffer.sqlite"
    grant(state, GRANTS)
    receiver = Receiver(mosquitto.host, mosquitto.port, tmp_path / "receiver.sqlite")
    receiver.start()
    looping = Simulator(logbook, speed="10", loop=0, name="kill9-sim")
    config = live_config(tmp_path, looping.port, mosquitto.port, batch_age=0.25, uplink_extra=SLOW_UPLINK)
    started = time.monotonic()
    killed_with_backlog = 0
    try:
        for kill in range(KILLS):
            agent = AgentProcess(config, logbook, name=f"kill9-{kill}")
            if kill % 5 == 4:  # every fifth kill lands during start-up (store, consent, buses, uplink opening)
                time.sleep(rng.uniform(0.1, 0.9))
            else:  # the others while frames are committed and batches are in flight
                agent.wait_ready()
                time.sleep(rng.uniform(0.2, 2.0))
            assert agent.alive, agent.log()
            agent.kill()
            if buffer.exists() and store_counters(buffer)["pending_batches"]:
                killed_with_backlog += 1
        looping.interrupt()
        before = store_counters(buffer)
        # The final clean run: a fresh, finite replay and an unthrottled uplink drain the backlog.
        final_sim = Simulator(logbook, looping.port, speed="20", loop=1, name="kill9-final-sim")
        config = live_config(tmp_path, final_sim.port, mosquitto.port, batch_age=0.25)
        agent = AgentProcess(config, logbook, name="kill9-final")
        agent.wait_ready()
        sent = final_sim.wait(timeout=60)
        wait_quiet(agent, quiet_s=1.0, timeout=30)
        agent.wait_status(lambda s: s["buffer"]["counters"]["pending_batches"] == 0, timeout=60)
        report = agent.stop()
        after = report["buffer"]["counters"]
        assert receiver.wait_for(batches=after["delivered"], timeout=30)
        receiver.wait_quiet(0.5, timeout=5)
        received = receiver.report()
        seqs = receiver_seqs(tmp_path / "receiver.sqlite")
    finally:
        looping.kill()
        receiver.stop()
    pipeline = report["pipeline"]
    print(f"\nkill -9 x{KILLS} in {time.monotonic() - started:.0f} s ({killed_with_backlog} with a backlog): "
          f"store written {after['written']} (before the final run {before['written']}), delivered "
          f"{after['delivered']}, buffered {after['pending_batches']}; receiver {received['batches']} unique, "
          f"{received['duplicates_dropped']} duplicates dropped, gaps {received['gaps']}, corrupt "
          f"{received['corrupt']}; final run: simulator sent {sent.total}, frames in {pipeline['frames_in']}, "
          f"dropped at bus {sum(report['dropped_at_bus'].values())}, batches written {pipeline['batches_written']}, "
          f"uplink acked {report['uplink']['acked']}")
    # Every committed batch arrived exactly once after dedup; nothing was left behind.
    assert after["pending_batches"] == 0 and after["written"] == after["delivered"]
    assert seqs == list(range(after["written"]))
    assert (received["batches"], received["gaps"], received["corrupt"]) == (after["written"], 0, 0)
    assert killed_with_backlog >= KILLS // 2, "the kills should mostly land with batches waiting"
    assert before["written"] > 0 and before["pending_batches"] > 0
    # Counts balance: persistent store counters, and the final run's own counters.
    assert_store_balance(after)
    assert_decode_balance(pipeline)
    assert pipeline["frames_in"] + sum(report["dropped_at_bus"].values()) == sent.total
    assert pipeline["batches_written"] == after["written"] - before["written"]
    assert report["uplink"]["acked"] == after["delivered"] - before["delivered"]
    assert received["samples"] >= pipeline["samples_written"]
