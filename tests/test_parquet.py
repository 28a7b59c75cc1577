"""The receiver's samples as Parquet, partitioned by vehicle and day, read back with pyarrow (issue 14)."""

from __future__ import annotations

from collections import Counter

import pytest

from agent.buffer import BatchStore
from simulator.cli import main as vehicle_sim
from simulator.receiver.parquet import write_parquet
from simulator.receiver.store import open_receiver_store
from tests.uplink_support import fill_store, store_as_received

pytestmark = pytest.mark.fleet

VEHICLES = ("veh-a1b2c3", "veh-d4e5f6")


@pytest.fixture(params=["sqlite", "postgresql"])
def receiver_db(request, tmp_path, shared_data):
    db = str(tmp_path / "receiver.sqlite") if request.param == "sqlite" else \
        request.getfixturevalue("postgres").new_database()
    store = open_receiver_store(db)
    try:
        for index, vehicle in enumerate(VEHICLES):
            with BatchStore(tmp_path / f"buffer-{index}.sqlite", synchronous="NORMAL") as buffer:
                ids = fill_store(buffer, shared_data, boot_id=f"boot-{index}", limit_rows=2000 + 1000 * index,
                                 vehicle=vehicle)
                store_as_received(store, vehicle, buffer.pending(len(ids)))
    finally:
        store.close()
    return db


def _db_samples(db) -> list[tuple]:
    store = open_receiver_store(db)
    try:
        return store.query("SELECT vehicle, boot_id, seq, timestamp, bus, key, category, value FROM samples")
    finally:
        store.close()


def test_parquet_holds_every_sample_by_vehicle_and_day(receiver_db, tmp_path):
    import pyarrow.dataset as ds

    out = tmp_path / "lake"
    assert vehicle_sim(["cloud", "parquet", "--db", str(receiver_db), "--out", str(out)]) == 0
    expected = _db_samples(receiver_db)
    assert len(expected) > 10_000
    dataset = ds.dataset(out, format="parquet", partitioning="hive")
    table = dataset.to_table()
    assert table.num_rows == len(expected)
    rows = table.to_pydict()
    got = sorted(zip(rows["vehicle"], rows["boot_id"], rows["seq"], rows["timestamp"], rows["bus"], rows["key"],
                     rows["category"], rows["value"]))
    assert got == sorted((v, b, s, t, bus, k, c, float(value)) for v, b, s, t, bus, k, c, value in expected)
    # Partitions: one folder per vehicle, and per UTC day of the samples' times.
    per_vehicle = Counter(rows["vehicle"])
    assert per_vehicle == Counter(v for v, *_ in expected) and set(per_vehicle) == set(VEHICLES)
    folders = {p.parent.relative_to(out).as_posix() for p in out.rglob("*.parquet")}
    assert all(f.startswith("vehicle=") and "/day=" in f for f in folders) and len(folders) >= 2
    # One vehicle only: exactly its rows.
    only = dataset.to_table(filter=ds.field("vehicle") == VEHICLES[0])
    assert only.num_rows == per_vehicle[VEHICLES[0]]


def test_parquet_refuses_a_non_empty_directory_and_writes_nothing_half(receiver_db, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert vehicle_sim(["cloud", "parquet", "--db", str(receiver_db), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_numbers_beyond_float64s_exact_range_are_kept_as_text(tmp_path):
    class Store:
        def query(self, sql, params=()):
            if "DISTINCT" in sql:
                return [("veh",)]
            return [("b", 1, 1.0, "can0", "M.S", "driving", 3.5, 2**60 + 1), ("b", 1, 2.0, "can0", "M.S", "driving",
                                                                              4.0, 7)]

    import pyarrow.parquet as pq

    summary = write_parquet(Store(), tmp_path / "lake")
    assert summary.samples == 2 and summary.vehicles == 1
    table = pq.read_table(summary.files[0]).to_pydict()
    assert table["raw"] == [None, 7.0] and table["raw_text"] == [str(2**60 + 1), None]
