"""The socketcand transport alone: python-can's stock client against ours (agent.canio.socketcand), side by side.

Each reader gets its own server process: the simulator's ``SocketcandServer`` on loopback, serving the
bundled truck log (J1939 + CANmod.gps, looped) from memory, so that reading the log file never limits
the rate and the server's CPU is not the reader's.  Two phases:

1. max: the server sends as fast as it can (TCP flow control paces it to the reader).
2. paced: a steady ``--rate`` frames/s (default 10k, the agent's target), sent in 1 ms slices.  The
   simulator's replay can only scale the log's own (bursty) clock (``--speed``); this is even.

The readers: the stock client's ``recv()``, the lean bus's ``recv()`` (the python-can path, one call per
frame) and its ``recv_block()`` (the block hand-over); in the paced phase also ``recv_block()`` with a
10 ms pause after each block, because at a steady rate the cost is mostly one wake-up per TCP segment
(the server sends every few frames), and only a consumer that waits can gather more frames per
wake-up.  Each reader only counts the frames.  Printed per reader:
frames/s (first to last frame), CPU time of the reading process (``time.process_time``: user + system,
all threads) per frame, and the ratio lean/stock.  SocketCAN (vcan) is not measured when this machine
has no vcan module; the script says so.

Run: ``python benchmarks/transport.py`` (about a minute; ``--frames`` and ``--paced-seconds`` to change).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import can
from common import REPO_ROOT  # puts the repo on sys.path

from agent.canio.socketcand import SocketcandConnectionClosed

BUNDLED_LOG = REPO_ROOT / "simulator" / "data" / "css_truck_j1939_and_canmod_gps.asc.gz"
STALL_S = 10.0  # no frame for this long: the run is cut short (and says so)

# python-can's stock client warns on every TCP read that ends mid-frame.
logging.getLogger("can.interfaces.socketcand").setLevel(logging.ERROR)


# --- the server process -------------------------------------------------------------------------------------------

def serve(log: Path, frames: int, rate: float) -> None:
    """Child process: print the port, wait for one client, send ``frames`` frames (at ``rate``/s; 0 = max)."""
    from agent.sources.log import LogSource
    from simulator.socketcand_server import SocketcandServer

    # What the protocol can carry (no remote or FD frames), in the log's order.
    messages = [msg for _bus, msg in LogSource(log) if not (msg.is_remote_frame or msg.is_fd)]
    server = SocketcandServer().start()
    print(server.port, flush=True)
    if not server.wait_for_clients(1, 30):
        raise SystemExit("no client within 30 s")
    started = time.monotonic()
    sent = 0
    count = len(messages)
    while sent < frames:
        due = frames if rate <= 0 else min(frames, int((time.monotonic() - started) * rate) + 1)
        while sent < due:
            server.send(messages[sent % count])
            sent += 1
        if rate > 0 and sent < frames:
            time.sleep(0.001)
    elapsed = time.monotonic() - started
    server.stop(flush_timeout=60)
    print(json.dumps({"sent": sent, "dropped": server.stats().dropped, "send_s": elapsed}), flush=True)


# --- the reading process ------------------------------------------------------------------------------------------

@dataclass
class Result:
    reader: str
    frames: int
    wall_s: float  # first frame to last
    cpu_s: float  # process_time over the whole read
    dropped: int
    complete: bool

    @property
    def rate(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_us_per_frame(self) -> float:
        return self.cpu_s / self.frames * 1e6 if self.frames else float("nan")


def read_one(reader: str, log: Path, frames: int, rate: float) -> Result:
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(log), "--frames", str(frames),
                              "--rate", str(rate)], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    assert child.stdout is not None
    port = int(child.stdout.readline())
    interface = "socketcand" if reader == "stock recv()" else "socketcand_lean"
    bus = can.Bus(interface=interface, host="127.0.0.1", port=port, channel="can0", ignore_config=True)
    got, first, last = 0, 0.0, 0.0
    cpu_start = time.process_time()
    try:
        last_seen = time.monotonic()
        while got < frames and time.monotonic() - last_seen < STALL_S:
            if reader.startswith("lean recv_block()"):
                n = len(bus.recv_block(0.5, 4096))
                if reader == COALESCING:
                    time.sleep(0.01)  # let frames gather: one wake-up per 10 ms instead of one per TCP segment
            else:
                n = 1 if bus.recv(0.5) is not None else 0
            if n:
                last_seen = time.monotonic()
                if not got:
                    first = time.perf_counter()
                got += n
                last = time.perf_counter()
    except SocketcandConnectionClosed:
        pass
    cpu = time.process_time() - cpu_start
    bus.shutdown()
    stats = json.loads(child.stdout.readline() or "{}")
    child.wait(60)
    return Result(reader, got, last - first, cpu, int(stats.get("dropped", -1)), got == frames)


READERS = ("stock recv()", "lean recv()", "lean recv_block()")
COALESCING = "lean recv_block() every 10 ms"  # paced only: what a consumer that waits between blocks saves


def vcan_line() -> str:
    if Path("/sys/module/vcan").exists():
        return "vcan: the kernel module is loaded here, but this benchmark compares socketcand clients only."
    modules = Path("/lib/modules")
    why = "no /lib/modules on this machine" if not modules.exists() else "/sys/module/vcan absent"
    return f"SocketCAN not measured: this machine has no vcan (kernel module missing: {why})."


def report(phase: str, results: list[Result]) -> None:
    stock = results[0]
    print(f"{phase}:")
    for r in results:
        ratio = ""
        if r is not stock and stock.frames and stock.rate:
            ratio = (f"   lean/stock: CPU per frame {r.cpu_us_per_frame / stock.cpu_us_per_frame:.2f}, "
                     f"frames/s {r.rate / stock.rate:.2f}")
        note = "" if r.complete else f"  INCOMPLETE ({r.frames} frames, stalled)"
        dropped = f", {r.dropped} dropped by the server" if r.dropped else ""
        print(f"  {r.reader:<29} {r.frames:>8,} frames  {r.rate:>9,.0f} frames/s  "
              f"CPU {r.cpu_s:6.2f} s = {r.cpu_us_per_frame:5.2f} us/frame{dropped}{note}{ratio}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", type=Path, default=BUNDLED_LOG, help="log to serve (default: the bundled truck log)")
    parser.add_argument("--frames", type=int, default=300_000, help="frames per reader at max speed (default 300k)")
    parser.add_argument("--rate", type=float, default=10_000, help="paced phase frames/s (default 10000)")
    parser.add_argument("--paced-seconds", type=float, default=8.0, help="paced phase length (default 8)")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.frames, args.rate)
        return 0

    print(vcan_line())
    print(f"log: {args.log.name}, served by simulator.socketcand_server on 127.0.0.1, one server process per reader")
    ok = True
    for phase, frames, rate in (("max speed", args.frames, 0.0),
                                (f"paced {args.rate:,.0f} frames/s", int(args.rate * args.paced_seconds), args.rate)):
        readers = READERS if rate <= 0 else (*READERS, COALESCING)
        results = [read_one(reader, args.log, frames, rate) for reader in readers]
        report(phase, results)
        ok = ok and all(r.complete for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
