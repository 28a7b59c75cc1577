"""Receivers as their own processes in one MQTT v5 shared-subscription group (tests and benchmarks/fleet.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from simulator.broker import LocalBroker
from simulator.receiver.store import open_receiver_store

REPO = Path(__file__).resolve().parents[1]
GROUP = "bench"


class Receivers:
    """``vehicle-sim cloud`` processes in one shared-subscription group."""

    def __init__(self, broker: LocalBroker, db: str, count: int, work: Path, group: str = GROUP) -> None:
        self.broker, self.db, self.work, self.group = broker, db, work, group
        self.processes: dict[str, subprocess.Popen] = {}
        for index in range(count):
            self.start(f"rx-{index}")

    def start(self, client_id: str) -> None:
        log = open(self.work / f"{client_id}.log", "a")
        process = subprocess.Popen([sys.executable, "-m", "simulator.cli", "cloud", "--broker",
                                    f"{self.broker.host}:{self.broker.port}", "--db", self.db, "--share", self.group,
                                    "--client-id", f"{self.group}-{client_id}"], cwd=REPO, stdout=log, stderr=log)
        self.processes[client_id] = process
        deadline = time.monotonic() + 30
        while "subscribed on" not in (self.work / f"{client_id}.log").read_text():
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError((self.work / f"{client_id}.log").read_text()[-2000:])
            time.sleep(0.05)

    def pause(self, client_id: str) -> None:
        """SIGSTOP: the receiver stays connected and subscribed but acknowledges nothing it is given."""
        self.processes[client_id].send_signal(signal.SIGSTOP)

    def kill(self, client_id: str) -> None:
        self.processes[client_id].send_signal(signal.SIGKILL)
        self.processes[client_id].wait(10)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def stored(db: str) -> tuple[int, int, int]:
    """(batches, conflicts, duplicates) in the receiver database."""
    store = open_receiver_store(db)
    try:
        return store.batch_count(), store.conflict_count(), store.counter("duplicates")
    finally:
        store.close()


