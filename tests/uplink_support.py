"""Batches from a real log for the uplink and receiver tests, and uplink configs for the test brokers.

The real Kona EV COMP-CAN log is decoded with its DBC and routed into three
streams of different priority (as collection rules would): every frame into
``telemetry``, the compressor commands into ``events``, and the heater status
in 1 s windows every 8 s into ``incident``.  The real Batcher encodes them and
the real BatchStore commits them, so the uplink sees exactly what it sees in
the agent.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.batch import Batcher, EncodedBatch
from agent.buffer import BatchStore
from agent.model import Row, SignalSpec
from agent.uplink.config import AllowedBroker, BrokerAddress, TlsConfig, UplinkConfig
from tests.broker import MosquittoBroker, TestPki
from tests.helpers.real_logs import REAL_LOGS, decoded_frames

LOG = REAL_LOGS[1]  # kona_ev_2020_comp_can_heating_clock_reset.log: 23316 decodable frames, 46 s
PRIORITIES = {"telemetry": 1, "events": 5, "incident": 9}
VEHICLE = "test-vehicle-1"


@dataclass(frozen=True)
class RoutedRows:
    specs: dict[str, SignalSpec]
    rows: tuple[Row, ...]  # in log order, every stream interleaved


@functools.lru_cache(maxsize=2)
def routed_rows(data_dir: Path) -> RoutedRows:
    decoder, frames = decoded_frames(data_dir, LOG)
    rows: list[Row] = []
    first = frames[0][1].timestamp
    for _, frame in frames:
        rows.append(Row("telemetry", PRIORITIES["telemetry"], frame.timestamp, frame.bus, frame.message, frame.raw))
        if frame.message == "CompressorControlMaybe":
            rows.append(Row("events", PRIORITIES["events"], frame.timestamp, frame.bus, frame.message, frame.raw))
        if frame.message == "HeaterStatus" and (frame.timestamp - first) % 8.0 < 1.0:
            rows.append(Row("incident", PRIORITIES["incident"], frame.timestamp, frame.bus, frame.message,
                            frame.raw))
    return RoutedRows(dict(decoder.specs), tuple(rows))


def make_batcher(store: BatchStore, specs: dict[str, SignalSpec], boot_id: str, max_age_s: float,
                 on_batch: Callable[[int], None] | None = None, vehicle: str = VEHICLE) -> Batcher:
    def sink(encoded: EncodedBatch) -> None:
        batch_id = store.add(encoded)
        if on_batch is not None:
            on_batch(batch_id)

    # Level 3: the tests need many batches quickly, not the smallest ones.
    return Batcher(specs, sink, vehicle, boot_id, lambda: store.next_seq(boot_id), max_age_s=max_age_s,
                   level=3)


def fill_store(store: BatchStore, data_dir: Path, boot_id: str = "boot-fill", max_age_s: float = 1.0,
               limit_rows: int | None = None, vehicle: str = VEHICLE) -> list[int]:
    """Batch the routed rows into the store at once; returns the batch ids in commit order."""
    routed = routed_rows(data_dir)
    ids: list[int] = []
    batcher = make_batcher(store, routed.specs, boot_id, max_age_s, ids.append, vehicle)
    for row in itertools.islice(routed.rows, limit_rows):
        batcher.put(row)
    batcher.flush()
    return ids


class PacedReplay(threading.Thread):
    """Feeds the routed rows through a Batcher into the store, spread over ``duration``
    seconds of wall-clock time (as a live bus would), calling ``on_batch`` after every
    committed batch.  ``batch_ids`` lists them in commit order."""

    def __init__(self, store: BatchStore, data_dir: Path, duration: float, on_batch: Callable[[], None],
                 boot_id: str = "boot-replay", max_age_s: float = 1.0) -> None:
        super().__init__(name="paced-replay", daemon=True)
        self.routed = routed_rows(data_dir)
        self.duration = duration
        self.batch_ids: list[int] = []
        self.error: BaseException | None = None
        self._on_batch = on_batch

        def committed(batch_id: int) -> None:
            self.batch_ids.append(batch_id)
            on_batch()

        self._batcher = make_batcher(store, self.routed.specs, boot_id, max_age_s, committed)

    def run(self) -> None:
        try:
            rows = self.routed.rows
            start = time.monotonic()
            step = max(1, len(rows) // 200)
            for index, row in enumerate(rows):
                self._batcher.put(row)
                if index % step == 0:
                    delay = start + self.duration * index / len(rows) - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
            self._batcher.flush()
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.error = exc


def plain_config(broker: MosquittoBroker, **overrides: object) -> UplinkConfig:
    values: dict = {
        "region": "eu-test",
        "broker": BrokerAddress(broker.host, broker.port),
        "allowed_brokers": [AllowedBroker(broker.host, broker.port, region="eu-test")],
        "allow_plaintext_loopback": True,
        "keepalive": 10,
        "in_flight": 8,
        "backoff_min": 0.2,
        "backoff_max": 1.0,
    }
    values.update(overrides)
    return UplinkConfig(**values)


def tls_config(broker: MosquittoBroker, pki: TestPki, key_password_env: str | None = "TEST_VEHICLE_KEY_PASSWORD",
               pin: str | None = None, **overrides: object) -> UplinkConfig:
    tls = overrides.pop("tls", None) or TlsConfig(ca=str(pki.ca), cert=str(pki.client.cert), key=str(pki.client.key),
                                                  key_password_env=key_password_env)
    values: dict = {
        "allowed_brokers": [AllowedBroker(broker.host, broker.port, region="eu-test", sha256=pin)],
        "allow_plaintext_loopback": False,
        "tls": tls,
    }
    values.update(overrides)
    return plain_config(broker, **values)


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def store_as_received(store, vehicle: str, batches) -> None:
    """Verify each batch and store it in a receiver store as the receiver does on arrival (each must be new)."""
    from agent.uplink.properties import parse_user_properties, user_properties
    from simulator.receiver import verify_batch

    for batch in batches:
        verified = verify_batch(vehicle, batch.stream, batch.payload,
                                parse_user_properties(user_properties(batch)), time.time())
        assert store.add_batch(verified.row, verified.samples, payload=batch.payload,
                               topic=f"vehicles/{vehicle}/v1/data/{batch.stream}") == "stored"
