"""Uplink benchmark: backlog drain rate and trigger -> PUBACK latency, against a loopback Mosquitto.

    python benchmarks/uplink.py [--data ../shared/data] [--batches 600] [--windows 1,16,64] [--json]

* Drain: a BatchStore (SQLite WAL, the agent's default synchronous=FULL unless
  --synchronous says otherwise) holds a backlog of real batches (every shared
  real log through the Batcher, 10 s batches or --batch-age, zstd level 19,
  repeated under new boot ids until --batches); the uplink starts and the clock
  stops when the store is empty.  Reported: payload MB/s and batches/s, per in-flight window.
* Latency: with the uplink connected and idle, one batch at a time is committed
  and notify()'d (the "trigger": an incident closing its batch); the time to its
  PUBACK being settled (mark_delivered) is measured.  Reported p50/p99, idle and
  while a telemetry backlog drains (the incident batch overtakes it by priority).

Mosquitto runs from tests/broker.py on a free 127.0.0.1 port; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import msgpack  # noqa: E402

from agent.batch import Batcher, EncodedBatch  # noqa: E402
from agent.batch.reading import decode_envelope  # noqa: E402
from agent.buffer import BatchStore  # noqa: E402
from agent.uplink import Uplink  # noqa: E402
from agent.uplink.config import AllowedBroker, BrokerAddress, UplinkConfig  # noqa: E402
from simulator.broker import LocalBroker as MosquittoBroker  # noqa: E402
from simulator.receiver.report import percentile  # noqa: E402
from tests.helpers.real_logs import REAL_LOGS, decoded_frames, rows_of  # noqa: E402

VEHICLE = "bench-vehicle"


class TimedStore:
    """The real store; remembers when each batch's delivery was settled."""

    def __init__(self, store: BatchStore) -> None:
        self.store = store
        self.delivered_at: dict[int, float] = {}
        self.delivered = threading.Condition()

    def pending(self, limit: int, exclude=()):
        return self.store.pending(limit, exclude)

    def mark_delivered(self, batch_id: int) -> None:
        now = time.perf_counter()
        self.store.mark_delivered(batch_id)
        with self.delivered:
            self.delivered_at[batch_id] = now
            self.delivered.notify_all()

    def dictionaries(self) -> dict[str, bytes]:
        return self.store.dictionaries()

    def wait_delivered(self, batch_id: int, timeout: float) -> float:
        with self.delivered:
            if not self.delivered.wait_for(lambda: batch_id in self.delivered_at, timeout):
                raise TimeoutError(f"batch {batch_id} not acknowledged within {timeout} s")
            return self.delivered_at[batch_id]


def real_encoded(data_dir: Path, wanted: int, max_age_s: float = 10.0) -> list[EncodedBatch]:
    """Real batches from every shared log, re-batched under new boot ids until ``wanted``."""
    sources = []
    for log in REAL_LOGS:
        if not (data_dir / log.path).is_file():
            continue
        decoder, frames = decoded_frames(data_dir, log)
        sources.append((decoder.specs, list(rows_of(frames))))
    out: list[EncodedBatch] = []
    for round_number in itertools.count():
        for index, (specs, rows) in enumerate(sources):
            seq = itertools.count()
            batcher = Batcher(specs, out.append, VEHICLE, f"bench-{round_number}-{index}", lambda s=seq: next(s),
                              max_age_s=max_age_s)
            for row in rows:
                batcher.put(row)
            batcher.flush()
            if len(out) >= wanted:
                return out[:wanted]
    raise AssertionError("unreachable")


def config(broker: MosquittoBroker, window: int) -> UplinkConfig:
    return UplinkConfig(region="bench", broker=BrokerAddress(broker.host, broker.port),
                        allowed_brokers=[AllowedBroker(broker.host, broker.port)], allow_plaintext_loopback=True,
                        in_flight=window, backoff_min=0.1, backoff_max=0.5)


def wait_connected(uplink: Uplink, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not uplink.state()["connected"]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"uplink did not connect: {uplink.state()}")
        time.sleep(0.01)


def drain(broker: MosquittoBroker, batches: list[EncodedBatch], window: int, directory: Path,
          synchronous: str) -> dict:
    path = directory / f"drain-{window}.sqlite"
    with BatchStore(path, quota_bytes=1 << 40, synchronous=synchronous) as store:
        for batch in batches:
            store.add(batch)
        total = store.counters()["pending_bytes"]
        uplink = Uplink(config(broker, window), store, VEHICLE)
        started = time.perf_counter()
        uplink.start()
        while store.counters()["pending_batches"]:
            time.sleep(0.005)
        elapsed = time.perf_counter() - started
        uplink.stop()
    path.unlink()
    return {"window": window, "batches": len(batches), "bytes": total, "seconds": round(elapsed, 3),
            "mb_per_s": round(total / elapsed / 1e6, 2), "batches_per_s": round(len(batches) / elapsed, 1)}


def renamed(batch: EncodedBatch, **changes: object) -> EncodedBatch:
    """The same body under a new identity (stream, priority, boot id, seq): a fresh batch for the store."""
    header = {**batch.header, **changes}
    _, body = decode_envelope(batch.payload)
    return EncodedBatch(msgpack.packb({"header": header, "body": body}), header)


def latency(broker: MosquittoBroker, sample: EncodedBatch, backlog: list[EncodedBatch], directory: Path,
            synchronous: str, count: int, window: int) -> dict:
    path = directory / f"latency-{len(backlog)}.sqlite"
    with BatchStore(path, quota_bytes=1 << 40, synchronous=synchronous) as real_store:
        store = TimedStore(real_store)
        uplink = Uplink(config(broker, window), store, VEHICLE)
        uplink.start()
        wait_connected(uplink)
        times = []
        for number in range(count):
            for batch in backlog:  # refill the telemetry backlog the incident has to overtake
                real_store.add(renamed(batch, boot_id=f"{batch.boot_id}-r{number}"))
            uplink.notify()
            incident = renamed(sample, stream="incident", priority=9, boot_id="bench-trigger", seq=number)
            triggered = time.perf_counter()
            batch_id = real_store.add(incident)
            uplink.notify()
            times.append(store.wait_delivered(batch_id, 30) - triggered)
            if backlog:
                while real_store.counters()["pending_batches"]:
                    time.sleep(0.002)
        uplink.stop()
    path.unlink()
    return {"backlog": len(backlog), "count": count, "window": window,
            "p50_ms": round(percentile(times, 0.5) * 1000, 2), "p99_ms": round(percentile(times, 0.99) * 1000, 2),
            "max_ms": round(max(times) * 1000, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--batches", type=int, default=600, help="backlog size for the drain (default 600)")
    parser.add_argument("--batch-age", type=float, default=10.0,
                        help="batcher max_age_s (default 10; 300 gives batches at the 64 KiB size limit)")
    parser.add_argument("--windows", default="1,16,64", help="in-flight windows to drain with (default 1,16,64)")
    parser.add_argument("--latency-count", type=int, default=200, help="triggers per latency run (default 200)")
    parser.add_argument("--synchronous", default="FULL", choices=("NORMAL", "FULL"),
                        help="SQLite synchronous mode of the store (default FULL, as the agent)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    batches = real_encoded(args.data, args.batches, args.batch_age)
    results: dict = {"synchronous": args.synchronous, "drain": [], "latency": []}
    with tempfile.TemporaryDirectory(prefix="uplink-bench-") as tmp:
        directory = Path(tmp)
        broker = MosquittoBroker(directory / "mosquitto")
        broker.start()
        try:
            for window in (int(w) for w in args.windows.split(",")):
                results["drain"].append(drain(broker, batches, window, directory, args.synchronous))
            small = min(batches, key=lambda b: len(b.payload))
            results["latency"].append(latency(broker, small, [], directory, args.synchronous,
                                              args.latency_count, 16))
            telemetry = batches[:64]
            results["latency"].append(latency(broker, small, telemetry, directory, args.synchronous,
                                              max(20, args.latency_count // 10), 16))
        finally:
            broker.stop()
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"store synchronous={args.synchronous}; {len(batches)} real batches, "
          f"{sum(len(b.payload) for b in batches) / 1e6:.2f} MB payload")
    for item in results["drain"]:
        print(f"drain   window {item['window']:>3}: {item['mb_per_s']:>7.2f} MB/s  {item['batches_per_s']:>8.1f} "
              f"batches/s  ({item['batches']} batches, {item['bytes'] / 1e6:.2f} MB in {item['seconds']} s)")
    for item in results["latency"]:
        where = "idle" if not item["backlog"] else f"behind {item['backlog']} telemetry batches"
        print(f"trigger -> PUBACK ({where}, window {item['window']}): p50 {item['p50_ms']} ms  "
              f"p99 {item['p99_ms']} ms  max {item['max_ms']} ms  (n={item['count']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
