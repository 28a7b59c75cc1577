"""Helpers for end-to-end tests: a real agent config, owner consent, agent processes, sample sets."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from agent.batch import decode_batch, iter_samples
from agent.buffer.store import BatchStore
from agent.privacy import ConsentPolicy, ConsentStore
from tests.helpers.agent_config import GPS_DBC, J1939_DBC, uplink_lines, write_agent_config

REPO = Path(__file__).resolve().parents[1]
TRUCK_LOG = "logs/css_truck_j1939_and_canmod_gps.asc"
# Re-exported: tests import the DBC paths and the uplink section from here.
__all__ = ["GPS_DBC", "J1939_DBC", "REPO", "TRUCK_LOG", "agent_config", "uplink_lines"]


def agent_config(tmp: Path, broker_port: int | None, *, batch_age: float = 10.0, uplink_extra: str = "",
                 extra: str = "", bus_prefix: str = "e2e") -> Path:
    """The truck log's two buses (virtual when live), state in ``tmp/state``, plaintext loopback broker."""
    return write_agent_config(tmp, broker_port=broker_port, batch_age=batch_age, uplink_extra=uplink_extra,
                              extra=extra, channel_prefix=bus_prefix)


def grant(state_dir: Path, categories: dict[str, str | None], expiry: str = "7d", clock=time.time) -> None:
    """The owner's grants, written to the durable consent state (as `vehicle-agent consent grant` does)."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    policy = ConsentPolicy(ConsentStore.in_dir(state_dir), clock=clock)
    for category, level in categories.items():
        policy.grant(category, expiry, level=level, purpose="test")


def agent_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent.cli.main", *args]


def run_agent(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(agent_command(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout)


def start_agent(config: Path, log_path: Path) -> subprocess.Popen:
    """`vehicle-agent run` as its own process (its stderr goes to ``log_path``)."""
    handle = open(log_path, "a")
    return subprocess.Popen(agent_command("-v", "run", "--config", str(config)), cwd=REPO, stdout=handle,
                            stderr=handle, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def stop_agent(process: subprocess.Popen, timeout: float = 30) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    return process.wait(timeout)


def store_samples(db: Path) -> tuple[list[tuple], int]:
    """Every sample in a buffer's unsent batches, and the number of batches."""
    with BatchStore(db, read_only=True) as store:
        batches = store.pending(100000)
        samples = [(round(t, 6), bus, key, value) for batch in batches
                   for t, bus, key, value, _raw in iter_samples(decode_batch(batch.payload))]
    return sorted(samples), len(batches)


def receiver_samples(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT timestamp, bus, key, value FROM samples").fetchall()
    return sorted((round(t, 6), bus, key, value) for t, bus, key, value in rows)


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
