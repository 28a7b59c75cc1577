"""The one way into the store (agent.flow.writer) and the consent gate's two doors (agent.flow.gate)."""

from __future__ import annotations

import sqlite3

import pytest

from agent.batch import Batcher
from agent.buffer.store import BatchStore
from agent.flow.gate import ConsentGate, Release
from agent.flow.writer import StoreWriter
from agent.model import Row, SignalSpec
from agent.privacy import ConsentPolicy
from tests.helpers.clock import FakeClock as Clock

SPECS = {"CCVS1.WheelBasedVehicleSpeed": SignalSpec("CCVS1.WheelBasedVehicleSpeed", "CCVS1", "WheelBasedVehicleSpeed",
                                                    1 / 256, 0.0, False, False, 16, None, None, "km/h", {}, "",
                                                    "driving")}


class FlakyStore:
    """A real store whose add fails while ``failing`` (a full disk)."""

    def __init__(self, store: BatchStore) -> None:
        self.store = store
        self.failing = False
        self.epoch = store.epoch

    def add(self, batch):
        if self.failing:
            raise sqlite3.OperationalError("database or disk is full")
        return self.store.add(batch)

    def next_seq(self, boot_id):
        return self.store.next_seq(boot_id)

    def next_stream_seq(self, boot_id, stream):
        return self.store.next_stream_seq(boot_id, stream)


def rig(tmp_path, policy):
    store = BatchStore(tmp_path / "buffer.sqlite")
    flaky = FlakyStore(store)
    writer = StoreWriter(flaky, ConsentGate(policy), "boot-w", max_waiting=4)
    batcher = Batcher(SPECS, writer.write, "truck-1", numbering=writer.numbers, max_age_s=1.0,
                      consent_version=policy.version)
    return store, flaky, writer, batcher


def speed(t: float) -> Row:
    return Row("telemetry", 0, t, "can0", "CCVS1", {"WheelBasedVehicleSpeed": 12800}, True)


def test_numbers_carry_the_store_epoch_and_per_stream_counts(tmp_path):
    policy = ConsentPolicy(None, clock=Clock())
    policy.grant("driving", "90d")
    store, _flaky, writer, batcher = rig(tmp_path, policy)
    for t in range(5):
        batcher.put(speed(float(t * 2)))
    batcher.flush()
    headers = [b.header for b in store.pending(100)]
    assert [h["seq"] for h in headers] == [0, 1, 2, 3, 4]
    assert [h["stream_seq"] for h in headers] == [0, 1, 2, 3, 4]
    assert {h["store_epoch"] for h in headers} == {store.epoch} and len(store.epoch) >= 16
    assert writer.counters.batches_written == 5


def test_a_refusing_store_keeps_batches_in_order_and_drops_past_the_bound(tmp_path):
    policy = ConsentPolicy(None, clock=Clock())
    policy.grant("driving", "90d")
    store, flaky, writer, batcher = rig(tmp_path, policy)
    flaky.failing = True
    for t in range(6):  # six batches, four may wait
        batcher.put(speed(float(t * 2)))
    batcher.flush()
    assert writer.waiting == 4 and writer.counters.batches_dropped == 2
    assert store.pending(100) == []
    flaky.failing = False
    writer.retry()
    assert writer.waiting == 0
    assert [b.header["seq"] for b in store.pending(100)] == [2, 3, 4, 5]  # oldest two dropped, order kept
    assert writer.counters.store_errors >= 6


def test_a_waiting_batch_meets_a_revocation_before_it_is_stored(tmp_path):
    policy = ConsentPolicy(None, clock=Clock())
    policy.grant("driving", "90d")
    store, flaky, writer, batcher = rig(tmp_path, policy)
    flaky.failing = True
    batcher.put(speed(0.0))
    batcher.flush()
    assert writer.waiting == 1
    policy.revoke("driving")
    flaky.failing = False
    writer.retry()
    assert writer.waiting == 0 and store.pending(10) == []
    assert writer.counters.refused_by_consent == 1 and writer.counters.batches_written == 0


def test_release_refuses_a_batch_made_before_a_revocation_and_purges_it(tmp_path):
    policy = ConsentPolicy(None, clock=Clock())
    policy.grant("driving", "90d")
    store, _flaky, _writer, batcher = rig(tmp_path, policy)
    batcher.put(speed(0.0))
    batcher.flush()
    [stored] = store.pending(10)
    gate = ConsentGate(policy, store=store)
    published = []
    assert gate.release(stored, lambda: published.append(stored.id) or True) is Release.SENT
    policy.revoke("driving")  # no purge handler wired here: the gate alone must stop it
    assert gate.release(stored, lambda: published.append(stored.id) or True) is Release.REFUSED
    assert published == [stored.id] and store.pending(10) == []
    assert gate.counters.refused_at_send == 1


class BlockedLedger:
    def __init__(self) -> None:
        self.blocked = True
        self.flushes = 0

    def flush_deferred(self) -> bool:
        self.flushes += 1
        return not self.blocked


def test_release_holds_everything_while_the_ledger_cannot_be_written(tmp_path):
    policy = ConsentPolicy(None, clock=Clock())
    policy.grant("driving", "90d")
    store, _flaky, _writer, batcher = rig(tmp_path, policy)
    batcher.put(speed(0.0))
    batcher.flush()
    [stored] = store.pending(10)
    ledger = BlockedLedger()
    gate = ConsentGate(policy, ledger, store)
    assert gate.release(stored, lambda: pytest.fail("published while the ledger is blocked")) is Release.HELD
    ledger.blocked = False
    assert gate.release(stored, lambda: True) is Release.SENT
    assert gate.counters.held_for_ledger == 1 and ledger.flushes == 1
