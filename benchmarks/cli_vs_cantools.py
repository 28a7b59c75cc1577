"""The engineers' commands against ``cantools decode --single-line`` on the same candump log, in one run.

The log is held out: 65,000 frames built in a temporary directory from the shared Kona 2019 log (copies
shifted in time, one channel), not a file any test or tuning used.  Each command runs as a whole process
(start-up, reading, decoding, writing to /dev/null), the commands in turn (A B A B ...), and each ratio is
taken pair by pair, so a machine whose speed drifts shifts both sides of a pair alike; the median is quoted.

    cantools      cantools decode --single-line pcan.dbc < held.log
    decode        vehicle-agent decode held.log --dbc pcan.dbc            (long CSV: a line per sample)
    wide-csv      vehicle-agent decode held.log --dbc pcan.dbc --format wide-csv
    replay        vehicle-agent replay held.log --dbc pcan.dbc --buffer B --grant-all  (decode .. buffer)

Goal: every ratio <= 1.0.  Our modules are byte-compiled first (as ``pip install`` of the wheel does;
an editable checkout under PYTHONDONTWRITEBYTECODE would compile them at every start).

Run: ``python benchmarks/cli_vs_cantools.py [--runs 5] [--frames 65000]``.
"""

from __future__ import annotations

import argparse
import compileall
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO_ROOT, SHARED_DATA  # benchmarks/common.py puts the repo on sys.path

SOURCE_LOG = SHARED_DATA / "logs" / "kona_ev_2019_pcan_ccan_power_on_ready.log"
DBC = REPO_ROOT / "dbc" / "kona-ev" / "pcan.dbc"


def build_log(path: Path, frames: int) -> None:
    """``frames`` candump lines: the source log again and again, each copy one second after the last."""
    lines = SOURCE_LOG.read_text().splitlines()
    out, shift = [], 0.0
    while len(out) < frames:
        newest = 0.0
        for line in lines[: frames - len(out)]:
            stamp, _channel, frame = line.split()
            t = float(stamp[1:-1]) + shift
            newest = max(newest, t)
            out.append(f"({t:.6f}) can0 {frame}")
        shift = newest + 1.0
    path.write_text("\n".join(out) + "\n")


def tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found (install the project: scripts/setup)")
    return found


def run_once(argv: list[str], stdin: Path | None, before=None) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one whole process."""
    if before is not None:
        before()
    start_usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(stdin, "rb") if stdin else open(os.devnull, "rb") as given, open(os.devnull, "wb") as devnull:
        subprocess.run(argv, stdin=given, stdout=devnull, stderr=devnull, check=True)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (usage.ru_utime - start_usage.ru_utime) + (usage.ru_stime - start_usage.ru_stime)
    return cpu, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--frames", type=int, default=65_000)
    args = parser.parse_args()
    compileall.compile_dir(str(REPO_ROOT / "agent"), quiet=1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        log = work / "held.log"
        build_log(log, args.frames)
        buffer = work / "replay.sqlite"

        def fresh_buffer() -> None:
            for path in work.glob("replay.sqlite*"):
                path.unlink()

        agent = tool("vehicle-agent")
        commands = {
            "cantools": ([tool("cantools"), "decode", "--single-line", str(DBC)], log, None),
            "decode": ([agent, "decode", str(log), "--dbc", str(DBC), "-o", os.devnull], None, None),
            "wide-csv": ([agent, "decode", str(log), "--dbc", str(DBC), "--format", "wide-csv", "-o", os.devnull],
                         None, None),
            "replay": ([agent, "replay", str(log), "--dbc", str(DBC), "--buffer", str(buffer), "--grant-all"],
                       None, fresh_buffer),
        }
        for argv, stdin, before in commands.values():  # warm-up: page cache, first start
            run_once(argv, stdin, before)
        figures: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, (argv, stdin, before) in commands.items():
                figures[name].append(run_once(argv, stdin, before))
    print(f"{args.frames} frames (held out: built from {SOURCE_LOG.name}), DBC {DBC.name}, {args.runs} runs each")
    print(f"{'command':<10} {'cpu s (median)':>15} {'wall s (median)':>16} {'frames/s':>9} "
          f"{'cpu / cantools':>15} {'wall / cantools':>16}")
    base = figures["cantools"]
    worst = 0.0
    for name, runs in figures.items():
        cpu = statistics.median(c for c, _ in runs)
        wall = statistics.median(w for _, w in runs)
        cpu_ratio = statistics.median(c / b for (c, _), (b, _) in zip(runs, base))
        wall_ratio = statistics.median(w / b for (_, w), (_, b) in zip(runs, base))
        if name != "cantools":
            worst = max(worst, cpu_ratio)
        print(f"{name:<10} {cpu:>15.3f} {wall:>16.3f} {args.frames / wall:>9,.0f} {cpu_ratio:>15.2f} "
              f"{wall_ratio:>16.2f}")
    print(f"goal: every ratio <= 1.0; worst CPU ratio {worst:.2f}: {'met' if worst <= 1.0 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
