"""Fleet benchmark: the reference receiver under a fleet's load, on SQLite and PostgreSQL, in one run.

    python benchmarks/fleet.py [--vehicles 10] [--receivers 1,2,4] [--json]

Everything runs on this machine, on loopback: a Mosquitto (simulator/broker.py), a PostgreSQL started into
a temporary directory (tests/postgres.py), receivers as their own processes (`vehicle-sim cloud --share
bench`: an MQTT v5 shared subscription, persistent sessions), vehicles as the agent's own Uplink.

* Ingest: each vehicle's backlog (real batches: the shared logs through the Batcher, 1 s batches) is in its
  own BatchStore; all uplinks start at once and the clock stops when the database holds every batch.
  Batches/s and samples/s with 1, 2 and 4 receivers, per database; ratios against 1 receiver.
* Killed receiver: two receivers; one is SIGKILLed when a third of the batches are stored and started again
  (same client id: its session); delivered = committed, 0 conflicts, 0 lost, and how many the broker
  delivered twice (dropped by the database as duplicates).
* Latency: `vehicle-sim fleet` vehicles batching live (1 s batches, real time); commit (the batch header's
  ``created``) -> stored in the database (the receiver's ``received``), p50/p99.
* Bytes per vehicle per day: the example configuration's rules (config/agent.yaml, every category granted)
  on the bundled truck log; payload + topic + MQTT v5 properties per batch, per hour of driving, against
  OVMS's documented 0.04-1 MB/day.

This machine has 2 cores for broker, receivers, database and vehicles together: more receivers than cores
cannot go faster here; the ratios say how the design scales where each receiver has its own core.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.buffer import BatchStore  # noqa: E402
from agent.uplink import Uplink  # noqa: E402
from agent.uplink.properties import user_properties  # noqa: E402
from agent.uplink.topics import data_topic  # noqa: E402
from simulator.broker import LocalBroker  # noqa: E402
from simulator.fleet import FleetOptions, run_fleet  # noqa: E402
from simulator.receiver.report import percentile  # noqa: E402
from simulator.receiver.store import open_receiver_store  # noqa: E402
from tests.fleet_support import Receivers, stored  # noqa: E402
from tests.postgres import PostgresServer, find_binaries  # noqa: E402
from tests.uplink_support import fill_store, plain_config  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
OVMS_MB_PER_DAY = (0.04, 1.0)


def make_backlogs(work: Path, vehicles: int) -> list[tuple[str, Path, int, int]]:
    """(vehicle id, store file, batches, samples) per vehicle, made once and copied for every run."""
    made = []
    for index in range(vehicles):
        vehicle = f"bench-{index:04d}"
        path = work / f"{vehicle}.sqlite"
        with BatchStore(path, synchronous="NORMAL") as store:
            ids = fill_store(store, SHARED, boot_id=f"boot-{index:04d}", max_age_s=1.0, vehicle=vehicle)
            samples = sum(b.header["samples"] for b in store.pending(len(ids)))
        made.append((vehicle, path, len(ids), samples))
    return made


def ingest(broker: LocalBroker, db: str, receivers: int, backlogs, work: Path, kill_at: float | None = None) -> dict:
    run = work / f"run-{time.monotonic_ns()}"
    run.mkdir()
    total = sum(b for _, _, b, _ in backlogs)
    samples = sum(s for _, _, _, s in backlogs)
    # A group of its own per run: a member's persistent session outlives its process, and the broker keeps
    # handing the group's share to it (queued, never stored here) until the session expires.
    group = Receivers(broker, db, receivers, run, group=run.name.replace("-", ""))
    stores, uplinks = [], []
    killed = False
    try:
        for vehicle, path, _, _ in backlogs:
            copy = run / path.name
            shutil.copyfile(path, copy)
            store = BatchStore(copy, synchronous="NORMAL")
            stores.append(store)
            uplinks.append(Uplink(plain_config(broker, in_flight=16), store, vehicle))
        start = time.perf_counter()
        for uplink in uplinks:
            uplink.start()
        deadline = time.monotonic() + 600
        count = 0
        while count < total and time.monotonic() < deadline:
            time.sleep(0.1)
            count = stored(db)[0]
            if kill_at is not None and not killed and count >= kill_at * total:
                group.kill("rx-1")
                killed = True
                time.sleep(1.0)
                group.start("rx-1")  # its persistent session: what it had not acknowledged comes again
        elapsed = time.perf_counter() - start
        batches, conflicts, duplicates = stored(db)
    finally:
        for uplink in uplinks:
            uplink.stop()
        for store in stores:
            store.close()
        group.stop()
    return {"receivers": receivers, "batches": batches, "committed": total, "samples": samples,
            "seconds": round(elapsed, 2), "batches_per_s": round(batches / elapsed, 1),
            "samples_per_s": round(samples / elapsed), "conflicts": conflicts, "duplicates": duplicates,
            "lost": total - batches, "killed": killed}


def latency(broker: LocalBroker, db: str, work: Path, vehicles: int, seconds: float) -> dict:
    run = work / f"latency-{time.monotonic_ns()}"
    run.mkdir()
    group = Receivers(broker, db, 2, run, group=run.name.replace("-", ""))
    try:
        report = run_fleet(FleetOptions(vehicles=vehicles, duration=seconds, broker_host=broker.host,
                                        broker_port=broker.port, speed=1.0, batch_age_s=1.0, work_dir=run))
        deadline = time.monotonic() + 60
        while stored(db)[0] < report.batches_acked and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        group.stop()
    store = open_receiver_store(db)
    try:
        values = sorted(v for (v,) in store.query("SELECT latency FROM batches WHERE latency IS NOT NULL"))
    finally:
        store.close()
    if not values:
        raise RuntimeError("no live batch reached the database")
    return {"batches": len(values), "p50_ms": round(1000 * percentile(values, 0.50), 1),
            "p99_ms": round(1000 * percentile(values, 0.99), 1)}


def bytes_per_day(work: Path) -> dict:
    buffer = work / "rules.sqlite"
    log = REPO / "simulator" / "data" / "css_truck_j1939_and_canmod_gps.asc.gz"
    result = subprocess.run([sys.executable, "-m", "agent.cli.main", "replay", str(log), "--config",
                             str(REPO / "config" / "agent.yaml"), "--buffer", str(buffer), "--grant-all", "--json"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    with BatchStore(buffer, read_only=True) as store:
        batches = store.pending(1_000_000)
    wire = 0
    t_min, t_max = min(b.header["t_min"] for b in batches), max(b.header["t_max"] for b in batches)
    for batch in batches:
        props = user_properties(batch)
        topic = data_topic("vehicles", "v" + "0" * 31, batch.stream)
        # PUBLISH: fixed header (<= 5), topic (2 + len), packet id 2, properties (user pairs: 1 + 2 + 2 each).
        wire += 5 + 2 + len(topic) + 2 + 4 + sum(5 + len(k) + len(v) for k, v in props) + len(batch.payload)
    hours = max(t_max - t_min, 1.0) / 3600
    per_hour = wire / hours
    return {"log_minutes": round(hours * 60, 1), "batches": len(batches), "wire_bytes": wire,
            "mb_per_driving_hour": round(per_hour / 1e6, 3),
            "mb_per_day_1h": round(per_hour / 1e6, 3), "mb_per_day_3h": round(3 * per_hour / 1e6, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vehicles", type=int, default=10)
    parser.add_argument("--receivers", default="1,2,4")
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    counts = [int(n) for n in args.receivers.split(",")]
    binaries = find_binaries()
    if binaries is None:
        raise SystemExit("PostgreSQL not found (scripts/setup installs the postgresql package)")
    results: dict = {"vehicles": args.vehicles, "ingest": {}, "killed": {}, "latency": {}}
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        broker = LocalBroker(work / "mosquitto").start()
        postgres = PostgresServer(binaries)
        postgres.start()
        try:
            backlogs = make_backlogs(work, args.vehicles)
            databases = {"sqlite": lambda name: str(work / f"{name}.sqlite"),
                         "postgresql": lambda name: postgres.new_database(name)}
            for kind, new_db in databases.items():
                rows = [ingest(broker, new_db(f"ingest_{kind}_{n}"), n, backlogs, work) for n in counts]
                results["ingest"][kind] = rows
                results["killed"][kind] = ingest(broker, new_db(f"killed_{kind}"), 2, backlogs, work, kill_at=1 / 3)
                results["latency"][kind] = latency(broker, new_db(f"latency_{kind}"), work, args.vehicles,
                                                   args.latency_seconds)
            results["bytes_per_day"] = bytes_per_day(work)
        finally:
            postgres.stop()
            broker.stop()
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    _print(results)
    return 0


def _print(results: dict) -> None:
    print(f"{results['vehicles']} vehicles, real batches (1 s), loopback Mosquitto, receivers in a shared group")
    print(f"{'database':<11} {'receivers':>9} {'batches':>8} {'seconds':>8} {'batches/s':>10} {'samples/s':>10} "
          f"{'vs 1':>6}")
    for kind, rows in results["ingest"].items():
        base = rows[0]["batches_per_s"]
        for row in rows:
            print(f"{kind:<11} {row['receivers']:>9} {row['batches']:>8} {row['seconds']:>8} "
                  f"{row['batches_per_s']:>10} {row['samples_per_s']:>10} {row['batches_per_s'] / base:>6.2f}")
    for kind, row in results["killed"].items():
        print(f"{kind}: one of two receivers killed at 1/3 and restarted: stored {row['batches']} of "
              f"{row['committed']} committed, lost {row['lost']}, conflicts {row['conflicts']}, "
              f"delivered twice and dropped {row['duplicates']}")
    for kind, row in results["latency"].items():
        print(f"{kind}: commit -> stored over {row['batches']} live batches: p50 {row['p50_ms']} ms, "
              f"p99 {row['p99_ms']} ms")
    day = results["bytes_per_day"]
    print(f"bytes per vehicle: {day['mb_per_driving_hour']} MB per driving hour at config/agent.yaml's rules "
          f"({day['batches']} batches over {day['log_minutes']} min of log): {day['mb_per_day_1h']} MB/day at 1 h "
          f"of driving, {day['mb_per_day_3h']} MB/day at 3 h (OVMS documents {OVMS_MB_PER_DAY[0]}-"
          f"{OVMS_MB_PER_DAY[1]} MB/day)")
    ratios = [row["batches_per_s"] / rows[0]["batches_per_s"] for rows in results["ingest"].values() for row in rows]
    print(f"median ingest ratio vs 1 receiver: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    sys.exit(main())
