"""Issue 16: frames handed over in blocks, and the agent's own per-frame path; ratios against baselines
measured in the same run.

(h) Reader thread -> pipeline thread hand-over, one process, a fake python-can bus serving prepared frames
    (so no sender's cost is in the figures).  CPU (all threads) per frame of: the bus read alone on one
    thread (the floor), the old path (a reader thread putting each frame on a ``queue.Queue``, the pipeline
    thread getting them one at a time: the agent before issue 16) and ``LiveSource`` (blocks).  Twice:
    a backlog (every frame ready: blocks fill to 256) and paced at 10k frames/s (blocks close at 5 ms:
    the fake bus is read a frame at a time, like SocketCAN).
(p) The agent's own path, decode -> collect -> consent -> batch -> store, on the bundled truck log (two
    passes, the second shifted in time, frames in memory) grouped as the readers hand them over at 10k
    frames/s (5 ms: one block per bus per 50 frames), under the soak's configuration (every signal into
    one stream) and config/agent.yaml (campaigns, triggers, incidents), consent granted.  CPU per frame
    of the per-frame ``Pipeline.feed`` loop and of ``Pipeline.feed_block``; both must store byte-identical
    batches.  ``--baseline-rev REV`` (or ``--baseline-tree DIR``) also runs the ``feed`` loop of older code
    (``git archive REV``) in a subprocess on the same frames and compares its batches too.

Run: ``python benchmarks/handover.py`` (about a minute; ``--quick`` for a look).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import pickle
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACED_RATE = 10_000.0  # frames/s: the soak's steady phase
READER_WINDOW = 50  # frames per 5 ms at PACED_RATE: what one reader wake-up of each bus hands over
GRANTS = {"vehicle_health": None, "driving": None, "location": "round3", "incident": None}


# -- (h) the hand-over -----------------------------------------------------------------------------

def _scheduled_bus(frames, rate: float | None):
    import can

    class ScheduledBus(can.BusABC):
        """Prepared frames, each no sooner than its release time at ``rate`` frames/s (None: all ready)."""

        def __init__(self) -> None:
            super().__init__(channel="bench")
            self.next = 0
            self.started = time.perf_counter()
            self.period = 1.0 / rate if rate else 0.0

        def _recv_internal(self, timeout):
            index = self.next
            if index >= len(frames):
                if timeout:
                    time.sleep(timeout)
                return None, True
            if self.period:
                wait = self.started + index * self.period - time.perf_counter()
                if wait > 0:
                    if not timeout or timeout < wait:
                        if timeout:
                            time.sleep(timeout)
                        return None, True
                    time.sleep(wait)
            self.next = index + 1
            return frames[index], True

        def send(self, msg, timeout=None) -> None:
            pass

    return ScheduledBus()


def _read_alone(frames, rate, pattern: str) -> float:
    """CPU s of reading every frame on one thread, no hand-over: ``recv(0.1)`` per frame as the old reader
    did (``before``), or as the reader now does (``now``: agent.sources.blocks.block_reader)."""
    from agent.sources.blocks import block_reader

    bus = _scheduled_bus(frames, rate)
    started = time.process_time()
    received = 0
    if pattern == "before":
        while received < len(frames):
            if bus.recv(0.1) is not None:
                received += 1
    else:
        (fill, limits), block = block_reader(bus), []
        while received + len(block) < len(frames):
            fill(block, 0.1)
            if len(block) >= limits.frames:
                received += len(block)
                block = []
    cpu = time.process_time() - started
    bus.shutdown()
    return cpu


def _one_at_a_time(frames, rate) -> float:
    """The hand-over before issue 16 (agent/sources/live.py and AgentRuntime.run as they were)."""
    bus = _scheduled_bus(frames, rate)
    frames_queue: queue.Queue = queue.Queue(maxsize=65536)
    stop = threading.Event()
    dropped = 0

    def read() -> None:
        nonlocal dropped
        while not stop.is_set():
            msg = bus.recv(0.1)
            if msg is not None:
                msg.channel = "bench"
                try:
                    frames_queue.put_nowait(("bench", msg))
                except queue.Full:
                    dropped += 1

    started = time.process_time()
    reader = threading.Thread(target=read)
    reader.start()
    consumed = 0
    while consumed + dropped < len(frames):
        try:
            frames_queue.get(timeout=0.2)
        except queue.Empty:
            continue
        consumed += 1
        for _ in range(4096):
            try:
                frames_queue.get_nowait()
            except queue.Empty:
                break
            consumed += 1
    stop.set()
    reader.join()
    cpu = time.process_time() - started
    bus.shutdown()
    return cpu


def _blocks(frames, rate) -> tuple[float, list[int]]:
    from agent.sources.live import LiveSource

    source = LiveSource({"bench": _scheduled_bus(frames, rate)})
    started = time.process_time()
    consumed = 0
    sizes: list[int] = []
    while consumed + sum(source.dropped.values()) < len(frames):
        for _bus, msgs in source.blocks(0.2):
            consumed += len(msgs)
            sizes.append(len(msgs))
    source.close()
    return time.process_time() - started, sizes


def handover(count: int, paced_count: int, reps: int) -> None:
    import can

    print(f"(h) reader -> pipeline hand-over: CPU per frame, all threads (fake bus, min of {reps} runs); "
          "hand-over = the path minus reading alone the same way (0.00: within the noise)")
    print(f"    {'regime':<16} {'read before':>12} {'read now':>9} {'one at a time':>14} {'blocks':>8} "
          f"{'blocks/old':>11} {'hand-over before':>17} {'hand-over now':>14} {'frames/block':>13}")
    for name, rate, n in (("backlog", None, count), (f"paced {PACED_RATE:,.0f}/s", PACED_RATE, paced_count)):
        frames = [can.Message(arbitration_id=0x100 + i % 64, data=bytes(8), timestamp=float(i)) for i in range(n)]
        runs: dict[str, list[float]] = {"read before": [], "read now": [], "old": [], "new": []}
        sizes: list[int] = []
        for _ in range(reps):  # interleaved: the machine's load moves all alike
            runs["read before"].append(_read_alone(frames, rate, "before"))
            runs["read now"].append(_read_alone(frames, rate, "now"))
            runs["old"].append(_one_at_a_time(frames, rate))
            cpu, sizes = _blocks(frames, rate)
            runs["new"].append(cpu)
        read_before, read_now, old, new = (min(v) / n * 1e6 for v in runs.values())
        print(f"    {name:<16} {read_before:>10.2f}us {read_now:>7.2f}us {old:>12.2f}us {new:>6.2f}us "
              f"{new / old:>11.2f} {max(0.0, old - read_before):>15.2f}us {max(0.0, new - read_now):>12.2f}us "
              f"{sum(sizes) / len(sizes):>13.1f}")


# -- (p) the agent's own path ------------------------------------------------------------------------

def _configs(tmp: Path) -> dict[str, Path]:
    import yaml

    from tests.helpers.agent_config import write_agent_config

    (tmp / "soak").mkdir(parents=True)
    soak = write_agent_config(tmp / "soak", buses="virtual", batch_age=10.0)  # the soak's live config, virtual
    example = yaml.safe_load((REPO_ROOT / "config/agent.yaml").read_text())
    for bus in example["buses"]:
        bus.update(interface="virtual", dbc=[str((REPO_ROOT / "config" / d).resolve()) for d in bus["dbc"]])
        bus.pop("channel", None)
        bus.pop("bitrate", None)
    example["state"]["dir"] = str(tmp / "example" / "state")
    example.pop("uplink", None)  # no broker here; the store is the end of the path
    example["camera"]["enabled"] = False
    (tmp / "example").mkdir(parents=True)
    path = tmp / "example" / "agent.yaml"
    path.write_text(yaml.safe_dump(example, sort_keys=False))
    return {"soak": soak, "example": path}


def _passes(config, count: int) -> list[list]:
    """``count`` passes of the bundled log, each shifted in time after the one before (a looped log whose
    clock goes on, as live frames stamped on arrival), each as the readers hand it over."""
    import can

    from agent.cli.common import bus_map_from_config
    from agent.sources.log import LogSource

    log = REPO_ROOT / "simulator/data/css_truck_j1939_and_canmod_gps.asc.gz"
    first = list(LogSource(str(log), bus_map=bus_map_from_config(config)))
    span = first[-1][1].timestamp - first[0][1].timestamp + 0.01
    passes = [first]
    for k in range(1, count):
        passes.append([(bus, can.Message(timestamp=m.timestamp + k * span, arbitration_id=m.arbitration_id,
                                         is_extended_id=m.is_extended_id, data=m.data, dlc=m.dlc))
                       for bus, m in first])
    return [_reader_blocks(frames) for frames in passes]


def _reader_blocks(frames: list) -> list:
    blocks = []
    for start in range(0, len(frames), READER_WINDOW):
        per_bus: dict = {}
        for bus, msg in frames[start:start + READER_WINDOW]:
            per_bus.setdefault(bus, []).append(msg)
        blocks.extend(per_bus.items())
    return blocks


class _Path:
    """One data path from a config (its own state dir and store), fed per frame or per block; the wall clock
    and the store epoch fixed, so that two paths' stored payloads can be compared byte for byte."""

    def __init__(self, config_path: Path, mode: str) -> None:
        from agent.config import load_config
        from agent.flow.build import BuildOptions, build
        from agent.flow.parts import state_dir_of
        from tests.e2e_support import grant

        config = load_config(config_path)
        grant(state_dir_of(config), GRANTS)
        self.stages = build(config, BuildOptions(boot_id="bench-boot"))
        self.stages.path.batcher.created_clock = lambda: 1_800_000_000.0
        self.stages.core.store.epoch = "bench-epoch"
        self.payloads: list[bytes] = []
        self.stages.core.writer.listeners.append(lambda _id, batch: self.payloads.append(batch.payload))
        self.mode = mode

    def feed(self, blocks: list) -> float:
        """CPU s of feeding one pass."""
        pipeline = self.stages.path.pipeline
        started = time.process_time()
        if self.mode == "feed":
            feed = pipeline.feed
            for bus, msgs in blocks:
                for msg in msgs:
                    feed(bus, msg)
        else:
            feed_block = pipeline.feed_block
            for bus, msgs in blocks:
                feed_block(bus, msgs)
        return time.process_time() - started

    def finish(self) -> list[bytes]:
        self.stages.path.pipeline.flush()
        self.stages.path.sidecars.close()
        self.stages.core.store.close()
        return self.payloads


def _canonical(payloads: list[bytes]) -> list:
    """Payloads without ``created`` (incident batches are stamped with the wall clock when written)."""
    from agent.batch.reading import decode_batch

    out = []
    for payload in payloads:
        decoded = decode_batch(payload)
        header = {k: v for k, v in decoded.header.items() if k != "created"}
        out.append((header, [(t.bus, t.message, t.signals, t.timestamps, t.columns) for t in decoded.tables]))
    return out


def _sameness(one: list[bytes], other: list[bytes]) -> str:
    """``bytes`` (byte-identical payloads), ``created`` (identical but for incident batches' wall-clock
    stamp) or ``DIFFERENT``."""
    if one == other:
        return "bytes"
    return "created" if _canonical(one) == _canonical(other) else "DIFFERENT"


def _per_frame(cpu: list[float], blocks: list) -> tuple[float, float]:
    frames = sum(len(msgs) for _, msgs in blocks)
    return min(cpu) / frames * 1e6, statistics.median(cpu) / frames * 1e6


def feed_only(name: str, passes: int, out: Path) -> None:
    """The baseline's side (run with an older tree first on sys.path): the feed loop over the same passes."""
    from agent.config import load_config

    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        config = _configs(Path(tmp))[name]
        blocks = _passes(load_config(config), passes + 1)
        path = _Path(config, "feed")
        path.feed(blocks[0])  # warm-up: decode caches, routes, the store's first pages
        cpu = [path.feed(b) for b in blocks[1:]]
        out.write_bytes(pickle.dumps({"per_frame": _per_frame(cpu, blocks[0]), "payloads": path.finish()}))


def own_path(passes: int, baseline: Path | None) -> None:
    from agent.config import load_config

    logging.disable(logging.WARNING)  # the example's incident triggers log each firing
    print(f"(p) the agent's own path (decode -> collect -> consent -> batch -> store), CPU per frame over "
          f"{passes} passes of the log after a warm-up one, min / median")
    header = f"    {'config':<8} {'feed':>15} {'feed_block':>15} {'block/feed':>11} {'identical':>10}"
    if baseline is not None:
        header += f" {'baseline feed':>15} {'block/base':>11} {'same as base':>13}"
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        configs = {mode: _configs(Path(tmp) / mode) for mode in ("feed", "block")}
        for name in configs["feed"]:
            blocks = _passes(load_config(configs["feed"][name]), passes + 1)
            paths = {mode: _Path(configs[mode][name], mode) for mode in configs}
            cpu: dict[str, list[float]] = {mode: [] for mode in paths}
            for number, one_pass in enumerate(blocks):
                for mode, path in paths.items():  # pass by pass, in turn: the machine's load moves both alike
                    spent = path.feed(one_pass)
                    if number:
                        cpu[mode].append(spent)
            stored = {mode: path.finish() for mode, path in paths.items()}
            (feed, feed_median), (block, block_median) = (_per_frame(cpu[m], blocks[0]) for m in ("feed", "block"))
            same = _sameness(stored["feed"], stored["block"])
            line = (f"    {name:<8} {feed:>6.2f} / {feed_median:>5.2f}us {block:>6.2f} / {block_median:>5.2f}us "
                    f"{block / feed:>11.2f} {same:>10}")
            if baseline is not None:
                out = Path(tmp) / f"baseline-{name}.pickle"
                command = [sys.executable, str(Path(__file__).resolve()), "--feed-only", name, "--tree",
                           str(baseline), "--passes", str(passes), "--out", str(out)]
                subprocess.run(command, check=True, cwd=baseline)
                result = pickle.loads(out.read_bytes())
                base, base_median = result["per_frame"]
                same_base = _sameness(result["payloads"], stored["block"])
                line += f" {base:>6.2f} / {base_median:>5.2f}us {block / base:>11.2f} {same_base:>13}"
            print(line, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames and runs")
    parser.add_argument("--reps", type=int, default=None, help="runs of each hand-over measurement")
    parser.add_argument("--passes", type=int, default=None, help="timed passes of the log for (p)")
    parser.add_argument("--baseline-rev", help="also time the feed loop of this git revision (git archive)")
    parser.add_argument("--baseline-tree", type=Path, help="also time the feed loop of the code in this directory")
    parser.add_argument("--feed-only", help=argparse.SUPPRESS)
    parser.add_argument("--tree", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree or REPO_ROOT))
    reps = args.reps or (2 if args.quick else 3)
    passes = args.passes or (2 if args.quick else 6)
    if args.feed_only:
        feed_only(args.feed_only, passes, args.out)
        return 0
    with contextlib.ExitStack() as stack:
        baseline = args.baseline_tree
        if args.baseline_rev:
            baseline = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            archive = subprocess.run(["git", "archive", args.baseline_rev], cwd=REPO_ROOT, check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive, check=True)
        handover(100_000 if args.quick else 300_000, 20_000 if args.quick else 50_000, reps)
        own_path(passes, baseline)
    print(json.dumps({"python": sys.version.split()[0], "cpus": os.cpu_count(), "load": os.getloadavg()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
