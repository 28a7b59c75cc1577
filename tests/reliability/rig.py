"""The live rig of the reliability suite: the simulator serving socketcand, `vehicle-agent run` as its own
process reading from it, its control socket, and the config that joins them.

Every agent process writes its stderr (the log) and stdout (the final JSON report) into one session-wide
directory (``LogBook``), so the secrets test can scan every line the suite made the agent write.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.config import load_config
from agent.control import ControlClient, control_socket_path
from simulator.broker import free_loopback_port
from tests.e2e_support import REPO
from tests.helpers.agent_config import write_agent_config

BUNDLED_LOG = REPO / "simulator/data/css_truck_j1939_and_canmod_gps.asc.gz"
BUS_MAP = {"0": "truck", "1": "gps"}
LOG_FRAMES = {"truck": 45571, "gps": 12278}  # frames per bus in one pass of the bundled log
# A syntactically valid VIN: every live agent of the suite has it configured, so the secrets test can
# check that it never reaches a log line (topics and headers carry a keyed pseudonym instead).
TEST_VIN = "1FUJGLDR9CLBP8834"
GRANTS = {"vehicle_health": None, "driving": None, "location": "round3", "incident": None}
DECODE_OUTCOMES = ("decoded", "unknown_id", "filtered", "wrong_length", "decode_errors", "error_frames",
                   "remote_frames")


@dataclass
class LogBook:
    """Where the suite's agent and simulator processes write; also the state dirs whose keys must stay secret."""

    directory: Path
    state_dirs: list[Path] = field(default_factory=list)
    _count: int = 0

    def path(self, name: str, suffix: str) -> Path:
        self._count += 1
        return self.directory / f"{self._count:03d}-{name}{suffix}"

    def files(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if p.is_file())


def live_config(tmp: Path, sim_port: int, broker_port: int | None = None, *, batch_age: float = 1.0,
                uplink_extra: str = "", extra: str = "", state_dir: Path | None = None, client: str = "lean") -> Path:
    """Both buses of the bundled log over socketcand from the simulator; plaintext loopback broker if given.
    ``client``: the agent's lean socketcand client (its default) or python-can's ``stock`` one."""
    buses = {"lean": "socketcand", "stock": "socketcand-stock"}[client]
    return write_agent_config(tmp, buses=buses, sim_port=sim_port, broker_port=broker_port,
                              batch_age=batch_age, vehicle=f"{{id: rel-truck, vin: {TEST_VIN}}}", state_dir=state_dir,
                              uplink_extra=uplink_extra, extra=extra, log_channels=False)


# Two telemetry streams of different priority, and incident snapshots (never evicted) at three moments of
# the drive: the trip odometer passing 1, 6 and 10 (43.6 s, 69.6 s and 98.6 s into the log).
STREAMS_AND_INCIDENTS = """\
collection:
  default_stream: drop
  campaigns:
    - name: bulk
      stream: telemetry
      priority: 0
      signals: ["EEC1.*", "gnss_imu.*"]
    - name: position
      stream: position
      priority: 3
      signals: ["gnss_pos.*", "gnss_attitude.*", "gnss_speed.*", "CCVS1.*", "gnss_status.*"]
incidents:
  pre_s: 2
  post_s: 1
  keep: 2
  max_mb: 0.001
  triggers:
    - {name: trip1, when: "gnss_odo.DistanceTrip >= 1"}
    - {name: trip6, when: "gnss_odo.DistanceTrip >= 6"}
    - {name: trip10, when: "gnss_odo.DistanceTrip >= 10"}
"""


def offline_config(tmp: Path, quota_mb: float) -> Path:
    """For in-process runs over the bundled log (no bus is opened): two streams, incidents, a buffer quota."""
    return write_agent_config(tmp, batch_age=2, vehicle=f"{{id: rel-truck, vin: {TEST_VIN}}}", quota_mb=quota_mb,
                              extra=STREAMS_AND_INCIDENTS)


_SUMMARY = re.compile(r"replayed (\d+) frames in [\d.]+ s \([\d.]+ frames/s, \d+ pass(?:es)?\): ([^;\n]*)")


@dataclass
class SimReport:
    total: int
    sent: dict[str, int]
    text: str


class Simulator:
    """`vehicle-sim replay BUNDLED_LOG --to socketcand://127.0.0.1:PORT --per-bus` as its own process."""

    def __init__(self, book: LogBook, port: int | None = None, *, speed: str = "10", loop: int = 1,
                 faults: str | None = None, wait_clients: int = 2, name: str = "sim") -> None:
        self.port = port or free_loopback_port()
        self.stdout_path = book.path(name, ".out")
        self.stderr_path = book.path(name, ".log")
        command = [sys.executable, "-m", "simulator.cli", "replay", str(BUNDLED_LOG), "--to",
                   f"socketcand://127.0.0.1:{self.port}", "--per-bus", "--bus-map",
                   ",".join(f"{k}={v}" for k, v in BUS_MAP.items()), "--speed", speed, "--loop", str(loop),
                   "--wait-clients", str(wait_clients), "--wait-timeout", "60", "-q"]
        if faults:
            command += ["--faults", faults]
        self._stdout = open(self.stdout_path, "w")
        self._stderr = open(self.stderr_path, "w")
        self.process = subprocess.Popen(command, cwd=REPO, stdout=self._stdout, stderr=self._stderr, text=True)
        deadline = time.monotonic() + 30
        while "listening on" not in self.stderr_path.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"simulator did not start: {self.stderr_path.read_text()}")
            time.sleep(0.02)

    def wait(self, timeout: float) -> SimReport:
        self.process.wait(timeout)
        return self._report(expected_code=0)

    def interrupt(self, timeout: float = 30) -> SimReport:
        """SIGINT: the simulator stops and reports what it sent (exit code 130)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout)
        return self._report(expected_code=130)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._close()

    def _close(self) -> None:
        self._stdout.close()
        self._stderr.close()

    def _report(self, expected_code: int) -> SimReport:
        self._close()
        text = self.stdout_path.read_text()
        match = _SUMMARY.search(text)
        if self.process.returncode != expected_code or match is None:
            raise RuntimeError(f"simulator failed ({self.process.returncode}): {text}"
                               f"{self.stderr_path.read_text()}")
        sent = {}
        for part in match.group(2).split(","):
            bus, _, count = part.strip().rpartition(" ")
            if bus:
                sent[bus] = int(count)
        return SimReport(int(match.group(1)), sent, text)


class AgentProcess:
    """One `vehicle-agent -v run --config CONFIG` process; its log and report go to the LogBook."""

    def __init__(self, config: Path, book: LogBook, name: str = "agent", env: dict[str, str] | None = None,
                 umask: int | None = None) -> None:
        self.config = config
        loaded = load_config(config)
        self.state_dir = loaded.resolve(loaded.state.dir)
        if self.state_dir not in book.state_dirs:
            book.state_dirs.append(self.state_dir)
        self.log_path = book.path(name, ".log")
        self.stdout_path = book.path(name, ".out")
        self._stdout = open(self.stdout_path, "w")
        self._stderr = open(self.log_path, "w")
        preexec: Callable[[], object] | None = (lambda: os.umask(umask)) if umask is not None else None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agent.cli.main", "-v", "run", "--config", str(config)], cwd=REPO,
            stdout=self._stdout, stderr=self._stderr, text=True, preexec_fn=preexec,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    @property
    def control_socket(self) -> Path:
        return control_socket_path(self.state_dir)

    def log(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def wait_ready(self, timeout: float = 30) -> None:
        """Until the control socket answers (buses open, uplink started)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise AssertionError(f"agent exited with {self.process.returncode}: {self.log()}")
            try:
                self.status()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"agent not ready within {timeout} s: {self.log()}")

    def status(self) -> dict:
        return ControlClient(self.control_socket, timeout=10).call("status")

    def wait_status(self, predicate: Callable[[dict], bool], timeout: float, interval: float = 0.2) -> dict:
        deadline = time.monotonic() + timeout
        status = self.status()
        while not predicate(status):
            if time.monotonic() > deadline:
                raise AssertionError(f"agent status never matched within {timeout} s: {json.dumps(status)[:3000]}")
            assert self.alive, self.log()
            time.sleep(interval)
            status = self.status()
        return status

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)
        self._close()

    def stop(self, timeout: float = 60) -> dict:
        """SIGTERM; the clean exit prints the final report (JSON) on stdout."""
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self._close()
        assert code == 0, f"agent exited with {code}: {self.log()}"
        lines = [line for line in self.stdout_path.read_text().splitlines() if line.startswith("{")]
        assert lines, f"no final report on stdout: {self.stdout_path.read_text()}"
        return json.loads(lines[-1])

    def _close(self) -> None:
        self._stdout.close()
        self._stderr.close()


def wait_quiet(agent: AgentProcess, quiet_s: float, timeout: float) -> dict:
    """Until the agent saw no new frame for ``quiet_s`` (the simulator's stream has drained)."""
    deadline = time.monotonic() + timeout
    status = agent.status()
    last, since = status["pipeline"]["frames_in"], time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        status = agent.status()
        if status["pipeline"]["frames_in"] != last:
            last, since = status["pipeline"]["frames_in"], time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return status
    raise AssertionError(f"frames still arriving after {timeout} s")


def assert_decode_balance(pipeline: dict) -> None:
    """frames in = decoded + every counted reject, per bus and in total."""
    per_bus = pipeline["decode"]
    for bus, counts in per_bus.items():
        assert counts["frames"] == sum(counts[k] for k in DECODE_OUTCOMES), (bus, counts)
    assert pipeline["frames_in"] == sum(c["frames"] for c in per_bus.values()) + pipeline["bad_timestamps"], pipeline


def assert_store_balance(counters: dict) -> None:
    """Every batch ever written is delivered, still buffered, or counted as removed."""
    gone = sum(counters[k] for k in ("delivered", "evicted", "expired", "purged", "quarantined"))
    assert counters["written"] == gone + counters["pending_batches"], counters


def background(target: Callable[[], object], name: str) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread
