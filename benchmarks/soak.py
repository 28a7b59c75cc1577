"""Soak and live rate: the running service, python-can's stock socketcand client against ours, in one run.

Every phase runs the real thing: `vehicle-agent run` reading the bundled truck log's two buses (ASC channel 0:
a J1939 bus, channel 1: a CANmod.gps module) over socketcand on loopback under granted consent, batching into
its SQLite buffer and uploading to a local Mosquitto.  The agent runs with the shipped systemd unit's
``Environment=`` (config/vehicle-agent.service) and a state directory past its first boot (consent granted,
signing key made), as on a vehicle.

1. Soak (ours): `vehicle-sim replay` loops the 127 s log to ``--hours`` of vehicle time (default 1 h: 29 passes,
   1.68M frames) at maximum speed.  RSS (VmRSS) sampled every 2 s; a least-squares line over the samples after
   the first 20 % (warm-up) gives the trend.  Targets: RSS <= 60 MB throughout, flat.
2. Steady ``--rate`` (default 10k frames/s), side by side: the agent with the stock client, then with ours.  The
   frames are sent evenly in 1 ms slices, in the log's own order and bus mix (a paced server: the simulator's
   replay can only scale the log's bursty clock).  CPU % of one core from the agent's utime + stime over the
   steady part.  Target <= 15 %.  On the lean run, a subscriber on the broker decodes every batch: latency from
   a frame's arrival (the server stamps each frame as it sends it, on loopback) to its batch committed (the
   header's ``created``, stamped as the batch closes, just before the store's commit) and to its delivery.
3. The transport alone at the same rate: the stock client with python-can's Notifier and a queue (the old live
   source), then the stock client and ours inside the agent's LiveSource (block hand-over), each consumer only
   counting.  So the agent's own share can be told apart from the transport's.
4. Two saturated buses: ``--saturate`` frames/s (default 9k, a full 1 Mbit/s bus) on each of the two buses at
   once, each bus its own frames looped; the agent (ours) must take them all: drops at the bus counted.
5. SocketCAN: measured where this kernel has vcan; where it has none, said so instead of a figure.

Run: ``python benchmarks/soak.py`` (about 5 minutes; ``--hours 0.1 --seconds 15`` for a quick look).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import REPO_ROOT  # noqa: F401  (puts the repo on sys.path)
from soak_live import LOG_BUSES, BatchWatch, PacedServer

from simulator.broker import LocalBroker
from tests.e2e_support import grant
from tests.helpers.systemd_unit import UNIT, directives, unit_environment
from tests.reliability.rig import GRANTS, AgentProcess, LogBook, Simulator, live_config

# Every agent here runs with the shipped unit's Environment= (as systemd would start it).
UNIT_ENVIRONMENT = unit_environment(directives(UNIT.read_text()))
LOG_SECONDS = 127.19  # one pass of the bundled log
RSS_TARGET_MB = 60.0
CPU_TARGET_PERCENT = 15.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WARM_S = 3.0  # steady phases: CPU is measured from this far in


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

    def cpu_window(self, start: float) -> dict:
        window = [s for s in self.samples if s.t >= start]
        first, last = window[0], window[-1]
        elapsed = last.t - first.t
        frames = last.frames - first.frames
        return {"rate": frames / elapsed, "window_s": elapsed,
                "cpu_percent": (last.cpu_s - first.cpu_s) / elapsed * 100,
                "cpu_us_per_frame": (last.cpu_s - first.cpu_s) / max(1, frames) * 1e6,
                "rss_max": max(s.rss_mb for s in self.samples)}


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return math.nan


def proc_cpu_s(pid: int) -> float:
    # Fields after the command name (which may hold spaces): utime and stime are fields 14 and 15.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


# --- the phases ---------------------------------------------------------------------------------------------------

def vehicle_state(state: Path) -> None:
    """Consent granted and the signing key made, as on a vehicle past its first boot: the key is made once, and
    a service whose key exists never loads cryptography (agent/export/signing.py)."""
    from agent.export.signing import key_file_fingerprint

    grant(state, GRANTS)
    key_file_fingerprint(state)


def watch_agent(agent: AgentProcess, started: float, done, interval: float) -> Trace:
    trace = Trace()
    pid = agent.process.pid
    while True:
        status = agent.status()
        trace.samples.append(Sample(time.monotonic() - started, proc_rss_mb(pid), proc_cpu_s(pid),
                                    status["pipeline"]["frames_in"]))
        if done():
            return trace
        time.sleep(interval)


def soak(work: Path, book: LogBook, broker: LocalBroker, hours: float) -> dict:
    loops = max(1, math.ceil(hours * 3600 / LOG_SECONDS))
    tmp = work / "soak"
    tmp.mkdir()
    vehicle_state(tmp / "state")
    sim = Simulator(book, speed="max", loop=loops, name="soak-sim")
    agent = AgentProcess(live_config(tmp, sim.port, broker.port, batch_age=10.0), book, name="soak",
                         env=UNIT_ENVIRONMENT)
    try:
        agent.wait_ready()
        trace = watch_agent(agent, time.monotonic(), lambda: sim.process.poll() is not None, 2.0)
        sent = sim.wait(timeout=60).total
        while agent.status()["pipeline"]["frames_in"] + sum(agent.status()["dropped_at_bus"].values()) < sent:
            time.sleep(0.2)
        report = agent.stop()
    finally:
        sim.kill()
        if agent.alive:
            agent.kill()
    rss = [s.rss_mb for s in trace.samples]
    warm = rss[int(len(rss) * 0.2):]
    last = trace.samples[-1]
    return {"vehicle_minutes": loops * LOG_SECONDS / 60, "frames": sent, "frames_in": report["pipeline"]["frames_in"],
            "dropped": sum(report["dropped_at_bus"].values()), "wall_s": last.t, "rate": last.frames / last.t,
            "rss_first": rss[0], "rss_max": max(rss), "rss_last": rss[-1], "rss_warm_min": min(warm),
            "rss_warm_max": max(warm), "slope_mb_per_min": trace.slope_mb_per_min(), "samples": len(rss),
            "cpu_us_per_frame": last.cpu_s / max(1, last.frames) * 1e6,
            "batches": report["pipeline"]["batches_written"], "acked": report["uplink"]["acked"]}


def live(work: Path, book: LogBook, broker: LocalBroker, name: str, client: str, mode: str, rate: float,
         seconds: float, watch: bool = False) -> dict:
    """One agent reading the paced server for ``seconds``; CPU over the steady part, drops, latency if ``watch``."""
    tmp = work / name
    tmp.mkdir()
    vehicle_state(tmp / "state")
    server = PacedServer(mode, rate, seconds)
    watcher = BatchWatch(broker.port) if watch else None
    agent = AgentProcess(live_config(tmp, server.port, broker.port, batch_age=10.0, client=client), book, name=name,
                         env=UNIT_ENVIRONMENT)
    try:
        agent.wait_ready()
        started = time.monotonic()
        trace = watch_agent(agent, started, lambda: not server.running(), 1.0)
        sent = server.report()
        while agent.status()["pipeline"]["frames_in"] + sum(agent.status()["dropped_at_bus"].values()) < sent["sent"]:
            time.sleep(0.2)
        report = agent.stop()  # flushes the open batches: the latency of those is the shutdown's, not counted
        wall_start = time.time() - (time.monotonic() - started)
    finally:
        server.kill()
        if agent.alive:
            agent.kill()
    result = trace.cpu_window(WARM_S)
    result.update(sent=sent["sent"], frames_in=report["pipeline"]["frames_in"],
                  dropped=sum(report["dropped_at_bus"].values()), server_dropped=sent["dropped"])
    if watcher is not None:
        time.sleep(1.0)
        watcher.stop()
        result["latency"] = watcher.latencies(wall_start + WARM_S)
    return result


def transport_only(kind: str, port: int, seconds: float) -> None:
    """Child process: read both buses with ``kind`` for ``seconds``, counting; print rate and CPU."""
    import logging
    import queue

    import can

    from agent.sources.bus_open import bus_kwargs_from_url
    from agent.sources.live import LiveSource

    logging.getLogger("can.interfaces.socketcand").setLevel(logging.ERROR)  # as the agent does
    counted = [0]
    if kind == "stock+notifier":
        frames: queue.Queue = queue.Queue(maxsize=65536)

        class Enqueue(can.Listener):
            def on_message_received(self, msg: can.Message) -> None:
                frames.put_nowait(msg)

        buses = [can.Bus(interface="socketcand", host="127.0.0.1", port=port, channel=n) for n in LOG_BUSES.values()]
        for bus in buses:
            can.Notifier(bus, [Enqueue()], timeout=0.1)

        def consume() -> None:
            while True:
                frames.get()
                counted[0] += 1
    else:
        client = kind.removeprefix("liveSource-")
        source = LiveSource.connect({n: bus_kwargs_from_url(f"socketcand://127.0.0.1:{port}/{n}?client={client}")
                                     for n in LOG_BUSES.values()})

        def consume() -> None:
            while True:
                for _bus, block in source.blocks(0.1):
                    counted[0] += len(block)

    threading.Thread(target=consume, daemon=True).start()
    time.sleep(WARM_S)
    cpu0, n0, t0 = time.process_time(), counted[0], time.monotonic()
    time.sleep(seconds - WARM_S - 1.0)
    cpu1, n1, t1 = time.process_time(), counted[0], time.monotonic()
    print(json.dumps({"rate": (n1 - n0) / (t1 - t0), "cpu_percent": (cpu1 - cpu0) / (t1 - t0) * 100,
                      "cpu_us_per_frame": (cpu1 - cpu0) / max(1, n1 - n0) * 1e6}), flush=True)
    os._exit(0)  # the server may still be sending; no orderly shutdown needed


def transport(kind: str, rate: float, seconds: float) -> dict:
    server = PacedServer("mix", rate, seconds + 2.0)
    try:
        result = subprocess.run([sys.executable, __file__, "--transport-only", kind, "--port", str(server.port),
                                 "--seconds", str(seconds)], capture_output=True, text=True, timeout=seconds + 60,
                                check=True)
    finally:
        server.kill()
    return json.loads(result.stdout.strip().splitlines()[-1])


def vcan_line() -> str:
    for channel in ("vcan0", "can0"):
        if Path(f"/sys/class/net/{channel}").exists():
            return f"SocketCAN: {channel} exists here, but this benchmark measures socketcand only."
    return ("SocketCAN: not measured - this kernel has no vcan module (no vcan0/can0): no figure rather than "
            "a made-up one.")


# --- report ------------------------------------------------------------------------------------------------------

def met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_report(s: dict, runs: dict[str, dict], t: dict[str, dict], sat: dict, rate: float) -> None:
    print(f"soak (ours): {s['vehicle_minutes']:.1f} min of vehicle time, {s['frames']:,} frames sent, "
          f"{s['frames_in']:,} seen (dropped at bus {s['dropped']}), in {s['wall_s']:.0f} s "
          f"({s['rate']:,.0f} frames/s); {s['batches']} batches, {s['acked']} acked")
    print(f"  RSS: first {s['rss_first']:.1f} MB, max {s['rss_max']:.1f} MB (target <= {RSS_TARGET_MB:.0f}: "
          f"{met(s['rss_max'] <= RSS_TARGET_MB)}), last {s['rss_last']:.1f} MB; after warm-up "
          f"{s['rss_warm_min']:.1f}-{s['rss_warm_max']:.1f} MB, trend {s['slope_mb_per_min']:+.3f} MB/min over "
          f"{s['samples']} samples; CPU {s['cpu_us_per_frame']:.1f} us per frame")
    print(f"steady {rate:,.0f} frames/s, whole agent, side by side:")
    for client, r in runs.items():
        print(f"  {client:<6} client: {r['rate']:,.0f} frames/s over {r['window_s']:.0f} s, dropped at bus "
              f"{r['dropped']}: CPU {r['cpu_percent']:.1f} % of one core (target <= {CPU_TARGET_PERCENT:.0f}: "
              f"{met(r['cpu_percent'] <= CPU_TARGET_PERCENT)}), {r['cpu_us_per_frame']:.1f} us per frame, "
              f"RSS max {r['rss_max']:.1f} MB")
    stock, lean = runs["stock"], runs["lean"]
    print(f"  ratio ours/stock: CPU {lean['cpu_percent'] / stock['cpu_percent']:.2f}")
    latency = lean.get("latency")
    if latency:
        c, d = latency["commit"], latency["deliver"]
        print(f"  latency (ours, {latency['frames']:,} frames; batches close after 10 s): arrival -> committed "
              f"p50 {c['p50']:.2f} s, p99 {c['p99']:.2f} s, max {c['max']:.2f} s; arrival -> delivered p50 "
              f"{d['p50']:.2f} s, p99 {d['p99']:.2f} s, max {d['max']:.2f} s")
    print(f"transport alone, {rate:,.0f} frames/s (both buses, a consumer that only counts):")
    for kind, r in t.items():
        print(f"  {kind:<18} {r['rate']:>7,.0f} frames/s  CPU {r['cpu_percent']:5.1f} % = "
              f"{r['cpu_us_per_frame']:5.2f} us/frame")
    base = t["stock+notifier"]
    for kind in ("liveSource-stock", "liveSource-lean"):
        print(f"  ratio {kind}/stock+notifier: CPU {t[kind]['cpu_percent'] / base['cpu_percent']:.2f}")
    for client, r in runs.items():
        alone = t[f"liveSource-{client}"]
        print(f"  the agent beyond its transport ({client}): {r['cpu_percent'] - alone['cpu_percent']:.1f} % "
              f"({r['cpu_us_per_frame'] - alone['cpu_us_per_frame']:.1f} us per frame)")
    lost = sat["sent"] - sat["frames_in"]
    print(f"two saturated buses ({sat['per_bus']:,.0f} frames/s each, ours): {sat['sent']:,} sent, "
          f"{sat['frames_in']:,} taken, dropped at bus {sat['dropped']}, lost {lost} "
          f"({met(sat['dropped'] == 0 and lost == 0)}); {sat['rate']:,.0f} frames/s, CPU {sat['cpu_percent']:.1f} % "
          f"of one core")
    print(vcan_line())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=1.0, help="vehicle time of the soak (default 1)")
    parser.add_argument("--rate", type=float, default=10_000, help="steady phases, frames/s (default 10000)")
    parser.add_argument("--saturate", type=float, default=9_000, help="frames/s per bus, two buses (default 9000)")
    parser.add_argument("--seconds", type=float, default=35, help="length of each live phase (default 35)")
    parser.add_argument("--transport-only", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.transport_only:
        transport_only(args.transport_only, args.port, args.seconds)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        work = Path(tmp)
        book = LogBook(work / "logs")
        book.directory.mkdir()
        broker = LocalBroker(work / "mosquitto").start()
        try:
            s = soak(work, book, broker, args.hours)
            runs = {client: live(work, book, broker, f"steady-{client}", client, "mix", args.rate, args.seconds,
                                 watch=client == "lean") for client in ("stock", "lean")}
            t = {kind: transport(kind, args.rate, args.seconds)
                 for kind in ("stock+notifier", "liveSource-stock", "liveSource-lean")}
            sat = live(work, book, broker, "saturated", "lean", "each", args.saturate, args.seconds)
            sat["per_bus"] = args.saturate
        finally:
            broker.stop()
    print_report(s, runs, t, sat, args.rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
