"""``vehicle-agent replay`` throughput: the whole offline pipeline on each shared real log.

For each log prints frames/s of (r) python-can's LogReader alone (the floor
set by reading the file), (p) our pipeline alone on frames already in memory
(decode -> collect -> consent -> batch -> SQLite store), (e) the command end
to end (reading included, as an engineer runs it), and (e) against the target
of 100k frames/s (11x a saturated 1 Mbit/s bus).  Bench mode (--grant-all):
every signal of every category at full rate.

Run: ``python benchmarks/replay.py``.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from pathlib import Path

import can
from common import REAL_PAIRS, SHARED_DATA  # benchmarks/common.py puts the repo on sys.path

from agent.cli.main import main as agent_main
from agent.dbc import load_dbc
from agent.decode import ALL_DBCS, Decoder
from agent.flow.build import BuildOptions, build
from agent.flow.parts import collection_plan
from agent.sources.log import LogSource

TARGET = 100_000


def reader_only(path: Path) -> tuple[int, float]:
    start = time.perf_counter()
    with can.LogReader(str(path)) as reader:
        frames = sum(1 for _ in reader)
    return frames, time.perf_counter() - start


def pipeline_only(path: Path, dbcs: list[Path], workdir: Path) -> float:
    frames = list(LogSource(path))
    plan = collection_plan(None)
    decoder = Decoder({ALL_DBCS: [load_dbc(p) for p in dbcs]}, wanted=plan.wants)
    stages = build(None, BuildOptions(grant_all=True, buffer=workdir / "pipeline.sqlite", decoder=decoder))
    pipeline = stages.path.pipeline
    feed = pipeline.feed
    start = time.perf_counter()
    for bus, msg in frames:
        feed(bus, msg)
    pipeline.flush()
    elapsed = time.perf_counter() - start
    stages.core.store.close()
    return elapsed


def end_to_end(path: Path, dbcs: list[Path], workdir: Path) -> float:
    db = workdir / "e2e.sqlite"
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        agent_main(["replay", str(path), "--dbc", *map(str, dbcs), "--buffer", str(db), "--grant-all"])
    return time.perf_counter() - start


def main() -> None:
    print(f"{'log':<48} {'frames':>7} {'(r) reader':>12} {'(p) pipeline':>13} {'(e) replay':>12} {'(e)/target':>10}")
    for log, dbcs in REAL_PAIRS:
        path = SHARED_DATA / log
        dbc_paths = [SHARED_DATA / d for d in dbcs]
        with tempfile.TemporaryDirectory() as tmp:
            frames, r = reader_only(path)
            p = pipeline_only(path, dbc_paths, Path(tmp))
            e = end_to_end(path, dbc_paths, Path(tmp))
        print(f"{path.name:<48} {frames:>7} {frames / r:>10,.0f}/s {frames / p:>11,.0f}/s {frames / e:>10,.0f}/s "
              f"{frames / e / TARGET:>10.2f}")


if __name__ == "__main__":
    main()
