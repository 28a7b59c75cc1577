"""One demo run: a log replayed by the simulator (another process, socketcand on loopback) into the
agent (this process), uploaded to the local Mosquitto, checked by the reference receiver."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.model import DecodedFrame
from agent.runtime import AgentRuntime
from simulator.broker import LocalBroker, free_loopback_port
from simulator.demo.setup import DemoInput, write_config
from simulator.receiver.client import Receiver

log = logging.getLogger(__name__)


@dataclass
class SignalStats:
    unit: str
    category: str
    count: int = 0
    total: float = 0.0
    minimum: float = math.inf
    maximum: float = -math.inf

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.minimum = min(self.minimum, value)
        self.maximum = max(self.maximum, value)

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan


@dataclass
class PhaseResult:
    title: str
    agent: dict
    receiver: dict
    signals: dict[str, SignalStats] = field(default_factory=dict)
    simulator_rc: int = 0
    drained: bool = True
    workdir: Path | None = None


class LocalStats:
    """What the agent decoded, per signal (shown on this screen only; nothing of it is uploaded)."""

    def __init__(self, specs) -> None:
        self.specs = specs
        self.signals: dict[str, SignalStats] = {}

    def __call__(self, frame: DecodedFrame) -> None:
        prefix = frame.message + "."
        for name, raw in frame.raw.items():
            key = prefix + name
            stats = self.signals.get(key)
            if stats is None:
                spec = self.specs[key]
                stats = self.signals[key] = SignalStats(spec.unit, spec.category)
            stats.add(float(self.specs[key].to_physical(raw)))


def _simulator_command(demo: DemoInput, port: int, speed: str) -> list[str]:
    command = [sys.executable, "-m", "simulator.cli", "replay", str(demo.log), "--to",
               f"socketcand://127.0.0.1:{port}", "--per-bus", "--speed", speed,
               "--wait-clients", str(len(demo.bus_dbcs)), "--wait-timeout", "60", "-q"]
    if demo.bus_map:
        command += ["--bus-map", demo.bus_map_arg]
    return command


def _wait_quiet(runtime: AgentRuntime, quiet_s: float, timeout: float) -> None:
    """Until no frame has arrived for ``quiet_s`` (the socketcand stream has drained)."""
    deadline = time.monotonic() + timeout
    last, last_change = runtime.frames_seen(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        seen = runtime.frames_seen()
        if seen != last:
            last, last_change = seen, time.monotonic()
        elif time.monotonic() - last_change >= quiet_s:
            return


def run_phase(title: str, demo: DemoInput, workdir: Path, broker: LocalBroker, speed: str,
              consent_file: Path | None = None, grant_all: bool = False, incidents: bool = False,
              extra_setup=None) -> PhaseResult:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_loopback_port()
    config = write_config(demo, workdir, port, broker.port, incidents=incidents)
    # The simulator serves socketcand first; the agent's buses connect to it when built.
    simulator = subprocess.Popen(_simulator_command(demo, port, speed), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, cwd=workdir, text=True)
    stderr_lines = _wait_listening(simulator)
    try:
        runtime = AgentRuntime(config, consent_file=str(consent_file) if consent_file else None,
                               bench_grant_all=grant_all)
    except BaseException:
        simulator.kill()
        raise
    local = LocalStats(runtime.pipeline.decoder.specs)
    runtime.pipeline.frame_listeners.append(local)
    categories_of = {key: spec.category for key, spec in runtime.pipeline.decoder.specs.items()}
    receiver = Receiver("127.0.0.1", broker.port, workdir / "receiver.sqlite", categories_of=categories_of)
    receiver.start()
    runtime.start()
    loop = threading.Thread(target=runtime.run, name="agent-pipeline", daemon=True)
    loop.start()
    try:
        if extra_setup is not None:
            extra_setup(runtime)
        simulator.wait(timeout=600)
        if simulator.returncode != 0:
            log.error("simulator failed: %s", "".join(stderr_lines).strip())
        _wait_quiet(runtime, quiet_s=1.0, timeout=30)
        drained = runtime.drain(timeout=60)
    finally:
        runtime.stop()
        loop.join(timeout=30)
        if simulator.poll() is None:
            simulator.kill()
    agent = runtime.final_report()
    receiver.wait_for(batches=agent["uplink"]["acked"] if agent.get("uplink") else 0, timeout=20)
    receiver.wait_quiet(0.5, timeout=5)
    report = receiver.report()
    # paho reports its own disconnect at stop as an error: expected here, so keep it quiet.
    logging.getLogger("simulator.receiver.paho").setLevel(logging.CRITICAL)
    receiver.stop()
    return PhaseResult(title, agent, report, local.signals, simulator.returncode, drained, workdir)


def _wait_listening(simulator: subprocess.Popen, timeout: float = 30.0) -> list[str]:
    """Read the simulator's stderr until it says it listens; keep reading it in the background."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert simulator.stderr is not None
    while time.monotonic() < deadline:
        line = simulator.stderr.readline()
        if not line:
            raise RuntimeError("simulator exited before listening: " + "".join(lines).strip())
        lines.append(line)
        if "listening on" in line:
            threading.Thread(target=lambda: lines.extend(simulator.stderr), daemon=True).start()
            return lines
    simulator.kill()
    raise RuntimeError("simulator did not start listening within 30 s")
