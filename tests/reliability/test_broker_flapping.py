"""Mosquitto stopped and started every few seconds during a 2-minute live replay: nothing lost (issue 7).

The broker stops gracefully (it writes its persistence file, so the receiver's persistent session keeps
what was queued for it); the agent must buffer through every outage and deliver every committed batch
exactly once, with counts that balance from the simulator to the receiver.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time

import pytest

from simulator.receiver.client import Receiver
from tests.e2e_support import grant
from tests.reliability.rig import (
    GRANTS,
    AgentProcess,
    Simulator,
    assert_decode_balance,
    assert_store_balance,
    background,
    live_config,
    wait_quiet,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

# The bundled log is 127 s long: at 1.06x it is a two-minute replay.
SPEED = "1.06"


def flap(broker, stop: threading.Event, rng: random.Random, outages: list[float]) -> None:
    """Up 2-4 s, down 1-3 s, until told to stop; always leaves the broker running."""
    while not stop.wait(rng.uniform(2.0, 4.0)):
        broker.stop()
        down = rng.uniform(1.0, 3.0)
        outages.append(down)
        stop.wait(down)
        broker.start()


def test_broker_flapping_through_a_two_minute_replay_loses_nothing(tmp_path, mosquitto, logbook):
    grant(tmp_path / "state", GRANTS)
    receiver = Receiver(mosquitto.host, mosquitto.port, tmp_path / "receiver.sqlite")
    receiver.start()
    sim = Simulator(logbook, speed=SPEED, loop=1, name="flapping-sim")
    agent = AgentProcess(live_config(tmp_path, sim.port, mosquitto.port, batch_age=1.0), logbook, name="flapping")
    stop_flapping = threading.Event()
    outages: list[float] = []
    started = time.monotonic()
    try:
        agent.wait_ready()
        flapper = background(lambda: flap(mosquitto, stop_flapping, random.Random(11), outages), "flapper")
        sent = sim.wait(timeout=180)
        stop_flapping.set()
        flapper.join(timeout=10)
        assert mosquitto.running
        replay_s = time.monotonic() - started
        during = agent.status()
        wait_quiet(agent, quiet_s=2.0, timeout=30)
        agent.wait_status(lambda s: s["buffer"]["counters"]["pending_batches"] == 0, timeout=60)
        report = agent.stop()
        counters = report["buffer"]["counters"]
        assert receiver.wait_for(batches=counters["written"], timeout=60)
        receiver.wait_quiet(0.5, timeout=5)
        received = receiver.report()
        with sqlite3.connect(tmp_path / "receiver.sqlite") as connection:
            seqs = [row[0] for row in connection.execute("SELECT seq FROM batches ORDER BY seq")]
    finally:
        stop_flapping.set()
        sim.kill()
        if agent.alive:
            agent.kill()
        receiver.stop()
    pipeline, uplink = report["pipeline"], report["uplink"]
    print(f"\nbroker flapping: {len(outages)} outages ({sum(outages):.0f} s down) in a {replay_s:.0f} s replay; "
          f"simulator sent {sent.total}, frames in {pipeline['frames_in']}, dropped at bus "
          f"{sum(report['dropped_at_bus'].values())}; batches written {pipeline['batches_written']} "
          f"({pipeline['samples_written']} samples), delivered {counters['delivered']}, buffered "
          f"{counters['pending_batches']}; uplink connects {uplink['connects']}, disconnects "
          f"{uplink['disconnects']}, connect failures {uplink['connect_failures']}, resent {uplink['resent']}; "
          f"receiver {received['batches']} unique ({received['samples']} samples), "
          f"{received['duplicates_dropped']} duplicates dropped, gaps {received['gaps']}, "
          f"corrupt {received['corrupt']}")
    assert len(outages) >= 20 and during["uplink"]["disconnects"] >= 1
    # The agent noticed (nearly) every outage and came back after it (a short one may fall in a backoff wait).
    assert min(uplink["connects"], uplink["disconnects"]) >= 0.8 * len(outages)
    # Every frame the simulator sent was seen and accounted for.
    assert pipeline["frames_in"] == sent.total and not report["dropped_at_bus"]
    assert_decode_balance(pipeline)
    # Every committed batch was delivered, exactly once after dedup, with all its samples.
    assert counters["written"] == pipeline["batches_written"] == counters["delivered"]
    assert_store_balance(counters)
    assert seqs == list(range(counters["written"]))
    assert (received["batches"], received["gaps"], received["corrupt"]) == (counters["written"], 0, 0)
    assert received["samples"] == pipeline["samples_written"]
