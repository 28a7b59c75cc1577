"""End to end through a real Mosquitto: what the agent committed arrives, once, intact (issue 4)."""

from __future__ import annotations

import random
import time

import pytest

from agent.buffer.store import BatchStore
from simulator.receiver.client import Receiver
from tests.e2e_support import (
    TRUCK_LOG,
    agent_config,
    grant,
    receiver_samples,
    run_agent,
    start_agent,
    stop_agent,
    store_samples,
    wait_until,
)

pytestmark = pytest.mark.uplink

GRANTS = {"vehicle_health": None, "driving": None, "location": "round3"}


def fill_buffer(tmp_path, shared_data, broker_port, batch_age=10.0, uplink_extra=""):
    config = agent_config(tmp_path, broker_port, batch_age=batch_age, uplink_extra=uplink_extra)
    grant(tmp_path / "state", GRANTS)
    buffer = tmp_path / "state" / "buffer.sqlite"
    result = run_agent("replay", str(shared_data / TRUCK_LOG), "--config", str(config), "--buffer", str(buffer))
    assert result.returncode == 0, result.stderr
    samples, batches = store_samples(buffer)
    assert batches > 0 and len(samples) > 50000
    return config, buffer, samples, batches


def test_receiver_gets_exactly_the_samples_the_agent_committed(tmp_path, shared_data, mosquitto):
    config, buffer, committed, batches = fill_buffer(tmp_path, shared_data, mosquitto.port)
    receiver = Receiver(mosquitto.host, mosquitto.port, tmp_path / "receiver.sqlite")
    receiver.start()
    agent = start_agent(config, tmp_path / "agent.log")
    try:
        assert receiver.wait_for(batches=batches, timeout=60), (tmp_path / "agent.log").read_text()[-3000:]
        report = receiver.report()
    finally:
        assert stop_agent(agent) == 0, (tmp_path / "agent.log").read_text()[-3000:]
        receiver.stop()
    assert (report["batches"], report["duplicates_dropped"], report["gaps"], report["corrupt"]) == (batches, 0, 0, 0)
    assert receiver_samples(tmp_path / "receiver.sqlite") == committed
    # Delivered batches are gone from the buffer: deleted only after their PUBACK.
    assert store_samples(buffer) == ([], 0)
    # Location left coarsened to round3 (3 decimals), never at full precision.
    latitudes = [v for _t, _b, key, v in committed if key == "gnss_pos.Latitude"]
    assert latitudes and all(round(v, 3) == v for v in latitudes)


def test_kill_9_mid_upload_loses_nothing_and_dedup_makes_it_exactly_once(tmp_path, shared_data, mosquitto):
    # Small batches and a byte-rate limit keep the upload going long enough to be killed in the middle.
    config, buffer, committed, batches = fill_buffer(
        tmp_path, shared_data, mosquitto.port, batch_age=1.0, uplink_extra="  byte_rate_limit: 4000\n  in_flight: 4")
    assert batches >= 100
    receiver = Receiver(mosquitto.host, mosquitto.port, tmp_path / "receiver.sqlite")
    receiver.start()
    rng = random.Random(1234)
    kills = 0
    try:
        for _ in range(5):
            agent = start_agent(config, tmp_path / "agent.log")
            # Wait for uploading to be under way, then kill at a random moment.
            before = receiver.unique_batches
            assert wait_until(lambda b=before: receiver.unique_batches > b, timeout=30)
            time.sleep(rng.uniform(0.05, 1.0))
            agent.kill()
            agent.wait(10)
            kills += 1
            assert receiver.unique_batches < batches, "killed too late: nothing left to test"
        agent = start_agent(config, tmp_path / "agent.log")
        assert receiver.wait_for(batches=batches, timeout=120), (tmp_path / "agent.log").read_text()[-3000:]
        assert stop_agent(agent) == 0
        report = receiver.report()
    finally:
        receiver.stop()
    print(f"kill -9 x{kills}: {batches} committed batches, received {report['batches']} unique, "
          f"{report['duplicates_dropped']} duplicates dropped, gaps {report['gaps']}")
    assert report["batches"] == batches and report["gaps"] == 0 and report["corrupt"] == 0
    # Duplicates only for batches in flight (unacknowledged) at a kill: at most the window per kill.
    assert report["duplicates_dropped"] <= kills * 4
    assert receiver_samples(tmp_path / "receiver.sqlite") == committed
    assert store_samples(buffer) == ([], 0)


def test_the_receiver_finds_a_hole_in_one_stream_and_names_the_stream(tmp_path, shared_data, mosquitto):
    config, buffer, _committed, batches = fill_buffer(tmp_path, shared_data, mosquitto.port, batch_age=2.0)
    # A batch that never leaves the car (as if evicted): its stream's numbering shows the hole.
    with BatchStore(buffer) as store:
        pending = store.pending(1000)
        assert {b.header["stream"] for b in pending} == {"telemetry"}
        assert sorted(b.header["stream_seq"] for b in pending) == list(range(len(pending)))
        victim = sorted(pending, key=lambda b: b.header["stream_seq"])[len(pending) // 2]
        assert store.purge(lambda b: b.id == victim.id) == [victim.id]
    receiver = Receiver(mosquitto.host, mosquitto.port, tmp_path / "receiver.sqlite")
    receiver.start()
    agent = start_agent(config, tmp_path / "agent.log")
    try:
        assert receiver.wait_for(batches=batches - 1, timeout=60)
        report = receiver.report()
    finally:
        assert stop_agent(agent) == 0
        receiver.stop()
    missing = victim.header["stream_seq"]
    assert report["gaps"] == 1
    assert [(g["stream"], g["first"], g["last"]) for g in report["gap_ranges"]] == [("telemetry", missing, missing)]
