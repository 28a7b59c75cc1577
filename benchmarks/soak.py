"""Soak: one hour of vehicle time through the running service, then a steady 10k frames/s live replay.

Both phases run the real thing: `vehicle-sim replay` serving the bundled truck log (ASC channel 0: a J1939
bus, channel 1: a CANmod.gps module) over socketcand on loopback, `vehicle-agent run` reading both buses
under granted consent, batching into its SQLite buffer and uploading to a local Mosquitto.

1. Soak: the 127 s log looped to one hour of vehicle time (29 passes, 1.68M frames) at maximum speed.
   The agent's RSS (VmRSS from /proc/PID/status) is sampled every 2 s; a least-squares line over the
   samples after the first 20 % (warm-up: caches, SQLite page cache, paho) gives the trend.
   Targets: RSS <= 80 MB throughout, no upward trend.  Also the agent's CPU time per frame.
2. Steady rate: the log at 22x real time (~10k frames/s) for ~35 s; CPU % of one core from the agent's
   utime + stime (/proc/PID/stat) over the steady part.  Target <= 15 %.
3. Baseline at the same rate: python-can's socketcand client, Notifier and a queue alone (what the agent's
   live source is made of), so the agent's own share of the CPU can be told apart from the transport's.

Run: ``python benchmarks/soak.py`` (about 3 minutes; ``--hours 0.1`` for a quick look).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import REPO_ROOT  # noqa: F401  (puts the repo on sys.path)

from simulator.broker import LocalBroker
from tests.e2e_support import grant
from tests.reliability.rig import GRANTS, LOG_FRAMES, AgentProcess, LogBook, Simulator, live_config

LOG_SECONDS = 127.19  # one pass of the bundled log
LOG_RATE = sum(LOG_FRAMES.values()) / LOG_SECONDS  # ~455 frames/s
RSS_TARGET_MB = 80.0
CPU_TARGET_PERCENT = 15.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    t: float  # s since the phase started
    rss_mb: float
    cpu_s: float  # utime + stime
    frames: int


@dataclass
class Trace:
    samples: list[Sample] = field(default_factory=list)

    def slope_mb_per_min(self, skip_fraction: float = 0.2) -> float:
        """Least-squares slope of RSS over time, after the warm-up."""
        points = self.samples[int(len(self.samples) * skip_fraction):]
        if len(points) < 3:
            return math.nan
        n = len(points)
        mean_t = sum(p.t for p in points) / n
        mean_r = sum(p.rss_mb for p in points) / n
        var = sum((p.t - mean_t) ** 2 for p in points)
        cov = sum((p.t - mean_t) * (p.rss_mb - mean_r) for p in points)
        return cov / var * 60.0 if var else math.nan


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return math.nan


def proc_cpu_s(pid: int) -> float:
    # Fields after the command name (which may hold spaces): utime and stime are fields 14 and 15.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def sample(agent: AgentProcess, started: float) -> Sample:
    pid = agent.process.pid
    return Sample(time.monotonic() - started, proc_rss_mb(pid), proc_cpu_s(pid),
                  agent.status()["pipeline"]["frames_in"])


def run_phase(work: Path, book: LogBook, broker: LocalBroker, speed: str, loops: int, interval: float,
              name: str) -> tuple[Trace, dict, int]:
    """One agent + one simulator run; samples until the simulator is done and the agent has caught up."""
    tmp = work / name
    tmp.mkdir()
    grant(tmp / "state", GRANTS)
    sim = Simulator(book, speed=speed, loop=loops, name=f"{name}-sim")
    agent = AgentProcess(live_config(tmp, sim.port, broker.port, batch_age=10.0), book, name=name)
    trace = Trace()
    try:
        agent.wait_ready()
        started = time.monotonic()
        while sim.process.poll() is None:
            trace.samples.append(sample(agent, started))
            time.sleep(interval)
        sent = sim.wait(timeout=60).total
        while agent.status()["pipeline"]["frames_in"] + sum(agent.status()["dropped_at_bus"].values()) < sent:
            time.sleep(0.2)
        trace.samples.append(sample(agent, started))
        report = agent.stop()
    finally:
        sim.kill()
        if agent.alive:
            agent.kill()
    return trace, report, sent


def soak(work: Path, book: LogBook, broker: LocalBroker, hours: float) -> dict:
    loops = max(1, math.ceil(hours * 3600 / LOG_SECONDS))
    trace, report, sent = run_phase(work, book, broker, "max", loops, 2.0, "soak")
    last = trace.samples[-1]
    rss = [s.rss_mb for s in trace.samples]
    warm = trace.samples[int(len(trace.samples) * 0.2):]
    return {
        "vehicle_minutes": loops * LOG_SECONDS / 60, "frames": sent, "frames_in": report["pipeline"]["frames_in"],
        "dropped": sum(report["dropped_at_bus"].values()), "wall_s": last.t, "rate": last.frames / last.t,
        "rss_first": rss[0], "rss_max": max(rss), "rss_last": rss[-1],
        "rss_warm_min": min(s.rss_mb for s in warm), "rss_warm_max": max(s.rss_mb for s in warm),
        "slope_mb_per_min": trace.slope_mb_per_min(), "samples": len(rss),
        "cpu_us_per_frame": last.cpu_s / max(1, last.frames) * 1e6,
        "batches": report["pipeline"]["batches_written"], "acked": report["uplink"]["acked"],
    }


def steady(work: Path, book: LogBook, broker: LocalBroker, rate: float, seconds: float) -> dict:
    speed = rate / LOG_RATE
    loops = max(1, math.ceil(seconds * speed / LOG_SECONDS))
    trace, report, sent = run_phase(work, book, broker, f"{speed:.2f}", loops, 1.0, "steady")
    # The steady part: from 3 s in to the last sample taken while the simulator was still sending.
    window = [s for s in trace.samples[:-1] if s.t >= 3.0]
    first, last = window[0], window[-1]
    elapsed = last.t - first.t
    return {
        "speed": speed, "frames": sent, "dropped": sum(report["dropped_at_bus"].values()),
        "rate": (last.frames - first.frames) / elapsed, "window_s": elapsed,
        "cpu_percent": (last.cpu_s - first.cpu_s) / elapsed * 100,
        "cpu_us_per_frame": (last.cpu_s - first.cpu_s) / max(1, last.frames - first.frames) * 1e6,
        "rss_max": max(s.rss_mb for s in trace.samples),
    }


def transport_only(port: int, seconds: float) -> None:
    """The baseline: python-can's socketcand client + Notifier + a queue, as the agent's live source uses
    them, with a consumer that only counts.  Runs in its own process (``--transport-only PORT``)."""
    import queue
    import threading

    import can

    frames: queue.Queue = queue.Queue(maxsize=65536)
    counted = [0]

    class Enqueue(can.Listener):
        def on_message_received(self, msg: can.Message) -> None:
            frames.put_nowait(msg)

    buses = [can.Bus(interface="socketcand", host="127.0.0.1", port=port, channel=name) for name in LOG_FRAMES]
    notifiers = [can.Notifier(bus, [Enqueue()], timeout=0.1) for bus in buses]

    def consume() -> None:
        while True:
            try:
                frames.get(timeout=2.0)
            except queue.Empty:
                return
            counted[0] += 1

    threading.Thread(target=consume, daemon=True).start()
    time.sleep(3.0)
    cpu0, n0, t0 = proc_cpu_s(os.getpid()), counted[0], time.monotonic()
    time.sleep(seconds)
    cpu1, n1, t1 = proc_cpu_s(os.getpid()), counted[0], time.monotonic()
    print(json.dumps({"rate": (n1 - n0) / (t1 - t0), "cpu_percent": (cpu1 - cpu0) / (t1 - t0) * 100,
                      "cpu_us_per_frame": (cpu1 - cpu0) / max(1, n1 - n0) * 1e6}), flush=True)
    for notifier in notifiers:
        notifier.stop()
    os._exit(0)  # the simulator is still sending; no orderly shutdown needed


def baseline(work: Path, book: LogBook, rate: float, seconds: float) -> dict:
    speed = rate / LOG_RATE
    sim = Simulator(book, speed=f"{speed:.2f}", loop=max(1, math.ceil((seconds + 6) * speed / LOG_SECONDS)),
                    name="baseline-sim")
    try:
        result = subprocess.run([sys.executable, __file__, "--transport-only", str(sim.port), "--seconds",
                                 str(seconds)], capture_output=True, text=True, timeout=seconds + 60, check=True)
    finally:
        sim.kill()
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=1.0, help="vehicle time of the soak (default 1)")
    parser.add_argument("--rate", type=float, default=10_000, help="steady phase frames/s (default 10000)")
    parser.add_argument("--seconds", type=float, default=35, help="steady phase length (default 35)")
    parser.add_argument("--transport-only", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.transport_only:
        logging.getLogger("can.interfaces.socketcand").setLevel(logging.ERROR)  # as the agent does
        transport_only(args.transport_only, args.seconds)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        work = Path(tmp)
        book = LogBook(work / "logs")
        book.directory.mkdir()
        broker = LocalBroker(work / "mosquitto").start()
        try:
            s = soak(work, book, broker, args.hours)
            r = steady(work, book, broker, args.rate, args.seconds)
            b = baseline(work, book, args.rate, args.seconds)
        finally:
            broker.stop()
    print(f"soak: {s['vehicle_minutes']:.1f} min of vehicle time, {s['frames']:,} frames sent, "
          f"{s['frames_in']:,} seen (dropped at bus {s['dropped']}), in {s['wall_s']:.0f} s "
          f"({s['rate']:,.0f} frames/s); "
          f"{s['batches']} batches, {s['acked']} acked")
    print(f"  RSS: first {s['rss_first']:.1f} MB, max {s['rss_max']:.1f} MB (target <= {RSS_TARGET_MB:.0f}: "
          f"{'met' if s['rss_max'] <= RSS_TARGET_MB else 'MISSED'}), last {s['rss_last']:.1f} MB; after warm-up "
          f"{s['rss_warm_min']:.1f}-{s['rss_warm_max']:.1f} MB, trend {s['slope_mb_per_min']:+.3f} MB/min "
          f"over {s['samples']} samples")
    print(f"  CPU: {s['cpu_us_per_frame']:.1f} us per frame (whole agent: decode to upload)")
    print(f"steady: speed {r['speed']:.1f}x = {r['rate']:,.0f} frames/s measured over {r['window_s']:.0f} s "
          f"(dropped at bus {r['dropped']}): CPU {r['cpu_percent']:.1f} % of one core (target <= "
          f"{CPU_TARGET_PERCENT:.0f}: {'met' if r['cpu_percent'] <= CPU_TARGET_PERCENT else 'MISSED'}, "
          f"ratio {r['cpu_percent'] / CPU_TARGET_PERCENT:.2f}), {r['cpu_us_per_frame']:.1f} us per frame, "
          f"RSS max {r['rss_max']:.1f} MB")
    print(f"  baseline, same rate: python-can's socketcand client + Notifier + queue alone: {b['rate']:,.0f} "
          f"frames/s, CPU {b['cpu_percent']:.1f} % ({b['cpu_us_per_frame']:.1f} us per frame); the agent beyond "
          f"it: {r['cpu_percent'] - b['cpu_percent']:.1f} % ({r['cpu_us_per_frame'] - b['cpu_us_per_frame']:.1f} "
          f"us per frame)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
