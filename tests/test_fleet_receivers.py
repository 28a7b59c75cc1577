"""Receivers scaled out through an MQTT v5 shared subscription, on SQLite and on PostgreSQL (issue 14).

Real batches of four vehicles (the shared logs through the Batcher) go out through the agent's Uplink to a
real Mosquitto; 2 or 4 `vehicle-sim cloud --share` processes take them into one database.  One receiver
is SIGKILLed mid-load and started again under its client id (its persistent session): the broker gives
it again what it had not acknowledged, the database drops what was already stored.
"""

from __future__ import annotations

import time

import pytest

from agent.buffer import BatchStore
from agent.uplink import Uplink
from simulator.receiver.report import build_report
from simulator.receiver.store import open_receiver_store
from tests.fleet_support import Receivers, stored
from tests.uplink_support import fill_store, plain_config

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

VEHICLES = 4


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "receiver.sqlite")
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
def backlogs(tmp_path, shared_data):
    made = []
    for index in range(VEHICLES):
        vehicle = f"fleet-{index:02d}"
        store = BatchStore(tmp_path / f"{vehicle}.sqlite", synchronous="NORMAL")
        ids = fill_store(store, shared_data, boot_id=f"boot-{index}", max_age_s=1.0, vehicle=vehicle,
                         limit_rows=20_000)
        made.append((vehicle, store, len(ids)))
    yield made
    for _, store, _ in made:
        store.close()


def _load(mosquitto, database, backlogs, receivers: Receivers, kill_at: float | None = None) -> dict:
    committed = sum(n for _, _, n in backlogs)
    # A small window per vehicle: many batches stay given but unacknowledged at any time.
    uplinks = [Uplink(plain_config(mosquitto, in_flight=2), store, vehicle) for vehicle, store, _ in backlogs]
    killed_at = None
    if kill_at is not None:
        # rx-1 is held still from the start, so when it is killed it holds its share of the load given but
        # unacknowledged, however fast the rest of the load goes (a free-running kill could land after the end).
        receivers.pause("rx-1")
    try:
        for uplink in uplinks:
            uplink.start()
        deadline = time.monotonic() + 180
        count = 0
        while count < committed and time.monotonic() < deadline:
            time.sleep(0.05)
            count = stored(database)[0]
            if kill_at is not None and killed_at is None and count >= kill_at * committed:
                killed_at = count
                receivers.kill("rx-1")
                time.sleep(0.5)
                receivers.start("rx-1")
        # Every PUBACK settled: nothing left in the vehicles' stores.
        while time.monotonic() < deadline and any(store.counters()["pending_batches"] for _, store, _ in backlogs):
            time.sleep(0.05)
    finally:
        for uplink in uplinks:
            uplink.stop()
    store = open_receiver_store(database)
    try:
        report = build_report(store)
    finally:
        store.close()
    batches, conflicts, duplicates = stored(database)
    return {"committed": committed, "batches": batches, "conflicts": conflicts, "duplicates": duplicates,
            "killed_at": killed_at, "report": report,
            "left_in_cars": sum(store.counters()["pending_batches"] for _, store, _ in backlogs)}


def test_four_receivers_share_the_load_and_store_each_batch_once(mosquitto, database, backlogs, tmp_path):
    receivers = Receivers(mosquitto, database, 4, tmp_path)
    try:
        result = _load(mosquitto, database, backlogs, receivers)
    finally:
        receivers.stop()
    assert result["batches"] == result["committed"] > 100
    assert result["conflicts"] == 0 and result["left_in_cars"] == 0
    assert result["report"]["gaps"] == 0, result["report"]
    assert result["report"]["vehicles"] == [vehicle for vehicle, _, _ in backlogs]


def test_a_receiver_killed_mid_load_loses_nothing(mosquitto, database, backlogs, tmp_path):
    receivers = Receivers(mosquitto, database, 2, tmp_path)
    try:
        result = _load(mosquitto, database, backlogs, receivers, kill_at=1 / 3)
    finally:
        receivers.stop()
    assert result["killed_at"] is not None and result["killed_at"] < result["committed"], result
    # Delivered = committed: nothing lost, nothing stored twice, nothing in conflict, no gap.
    assert result["batches"] == result["committed"]
    assert result["conflicts"] == 0 and result["left_in_cars"] == 0
    assert result["report"]["gaps"] == 0, result["report"]
