"""Payload benchmark: bytes per sample and encode+store throughput on every shared real log.

    python benchmarks/payload.py [--data ../shared/data] [--level 19] [--json]

For each log (DBCs as in shared/data/MANIFEST.md "Which DBC decodes which log"),
every signal of every decoded frame at full rate becomes a row; rows go
through the Batcher (10 s batches) into a BatchStore (SQLite WAL,
synchronous=FULL) in a temporary directory.  Printed per log, once without and
once with the catalog dictionary:

* bytes/sample of the stored payloads (envelope and header included);
* ratio (a): against the same frames as candump -L text, zstd level 3, in the
  same 10 s windows (a window starts at a frame 10 s or more away from the
  window's first frame, the rule the batcher uses);
* ratio (b): against JSON lines of the decoded samples (one compact object
  {"t","bus","key","value"} per sample), zstd level 3, same windows;
* lossless: every batch decoded again equals the decoded samples exactly (mode "default": exactly
  to the agent's default time resolution, batching.time_resolution_us);
* encode+store throughput in samples/s (one core: put + close + commit).

Targets (issue 3): (a) <= 0.25, (b) <= 0.2, stretch (b) <= 0.12 with a
dictionary, throughput >= 300k samples/s.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import operator
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import zstandard

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.batch import Batcher, decode_batch, dictionary_id, iter_samples, schema_dictionary  # noqa: E402
from agent.batch.columns import micros_of, quantize_us  # noqa: E402
from agent.batch.format import DEFAULT_LEVEL, DEFAULT_TIME_RESOLUTION_US  # noqa: E402
from agent.buffer import BatchStore  # noqa: E402
from agent.dbc import load_dbc  # noqa: E402
from agent.model import DecodedFrame  # noqa: E402
from tests.helpers.real_logs import REAL_LOGS, decoded_frames, rows_of  # noqa: E402

WINDOW_S = 10.0
TARGET_A, TARGET_B, STRETCH_B, TARGET_RATE = 0.25, 0.2, 0.12, 300_000
TARGET_A_NO_TRANSPORT = 0.15  # issue 15: default config (transport signals left out)


def windows(pairs: list) -> list[list]:
    out: list[list] = []
    start = None
    for pair in pairs:
        timestamp = pair[1].timestamp
        if start is None or abs(timestamp - start) >= WINDOW_S:
            out.append([])
            start = timestamp
        out[-1].append(pair)
    return out


def candump_line(msg, bus: str) -> str:
    ident = f"{msg.arbitration_id:08X}" if msg.is_extended_id else f"{msg.arbitration_id:03X}"
    return f"({msg.timestamp:.6f}) {bus} {ident}#{bytes(msg.data).hex().upper()}\n"


def baselines(pairs: list, decoder) -> tuple[int, int]:
    compressor = zstandard.ZstdCompressor(level=3)
    candump = jsonl = 0
    for window in windows(pairs):
        candump += len(compressor.compress("".join(candump_line(m, f.bus) for m, f in window).encode()))
        lines = []
        for _, frame in window:
            for name, value in decoder.physical(frame).items():
                lines.append(json.dumps({"t": frame.timestamp, "bus": frame.bus, "key": f"{frame.message}.{name}",
                                         "value": value}, separators=(",", ":")))
        jsonl += len(compressor.compress(("\n".join(lines) + "\n").encode()))
    return candump, jsonl


def expected_samples(pairs: list, decoder, resolution_us: int = 1) -> Counter:
    expected: Counter = Counter()
    for _, frame in pairs:
        timestamp = frame.timestamp if resolution_us == 1 else \
            quantize_us(micros_of(frame.timestamp), resolution_us) / 1_000_000
        for name, raw in frame.raw.items():
            spec = decoder.specs[f"{frame.message}.{name}"]
            expected[(timestamp, frame.bus, spec.key, spec.to_physical(raw), raw)] += 1
    return expected


def entropy_bytes(values: list) -> float:
    """Zero-order entropy of a list, in bytes."""
    counts, total = Counter(values).values(), len(values)
    return sum(-c * math.log2(c / total) for c in counts) / 8


def value_bound(pairs: list) -> float:
    """A lower bound on the value columns' bytes for the whole log, no timestamps or headers: per signal, the
    zero-order entropy of the better of its raw values and their deltas (what a column codec without a
    context model can reach at best)."""
    columns: dict[str, list] = {}
    for _, frame in pairs:
        for name, raw in frame.raw.items():
            columns.setdefault(f"{frame.bus}.{frame.message}.{name}", []).append(raw)
    return sum(min(entropy_bytes(v), entropy_bytes(list(map(operator.sub, v[1:], v[:-1])))) if len(v) > 1 else 0
               for v in columns.values())


def run_one(pairs: list, decoder, dictionary: bytes | None, level: int, workdir: Path,
            resolution_us: int = 1) -> dict:
    rows = list(rows_of(pairs))
    samples = sum(len(r.values) for r in rows)
    db_path = workdir / f"bench-{time.monotonic_ns()}.db"
    store = BatchStore(db_path)
    payloads: list[bytes] = []

    def sink(batch) -> None:
        store.add(batch)
        payloads.append(batch.payload)

    batcher = Batcher(decoder.specs, sink, "bench-vehicle", "bench-boot", itertools.count().__next__,
                      level=level, dictionary=dictionary, time_resolution_us=resolution_us)
    start = time.perf_counter()
    for row in rows:
        batcher.put(row)
    batcher.flush()
    elapsed = time.perf_counter() - start
    store.close()
    dictionaries = {dictionary_id(dictionary): dictionary} if dictionary else {}
    decoded = Counter(s for p in payloads for s in iter_samples(decode_batch(p, dictionaries)))
    size = sum(len(p) for p in payloads)
    return {"batches": len(payloads), "bytes": size, "bytes_per_sample": size / samples, "samples": samples,
            "rate": samples / elapsed, "lossless": decoded == expected_samples(pairs, decoder, resolution_us),
            "max_batch_bytes": max(len(p) for p in payloads)}


def transport_keys(data_dir: Path, log, pairs: list) -> set[str]:
    """``Message.Signal`` of the log's counters and checksums, as ``catalog init --log`` proposes them
    (agent.integrity.infer: by name and by how the values behave on this very log)."""
    from agent.integrity.infer import infer_roles
    from agent.sources.log import LogSource

    keys: set[str] = set()
    frames = list(LogSource(data_dir / log.path))
    for paths in log.dbcs.values():
        for path in paths:
            database = load_dbc(data_dir / path).database
            keys |= {f"{m}.{s}" for (m, s), proposal in infer_roles(database, frames).items()
                     if proposal.role != "data"}
    return keys


def without(pairs: list, keys: set[str]) -> list:
    """The decoded frames with the transport signals left out (the agent's default: they stay in the car)."""
    out = []
    for msg, frame in pairs:
        raw = {name: value for name, value in frame.raw.items() if f"{frame.message}.{name}" not in keys}
        if raw:
            out.append((msg, DecodedFrame(frame.timestamp, frame.bus, frame.frame_id, frame.message, raw)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="shared data directory")
    parser.add_argument("--level", type=int, default=DEFAULT_LEVEL, help=f"zstd level (default {DEFAULT_LEVEL})")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for log in REAL_LOGS:
            decoder, pairs = decoded_frames(args.data, log)
            candump, jsonl = baselines(pairs, decoder)
            schema_dict = schema_dictionary(decoder.specs)
            keys = transport_keys(args.data, log, pairs)
            stripped = without(pairs, keys)
            for mode, dictionary, frames, resolution in (
                    ("plain", None, pairs, 1), ("dict", schema_dict, pairs, 1), ("-tr", schema_dict, stripped, 1),
                    ("default", schema_dict, stripped, DEFAULT_TIME_RESOLUTION_US)):
                result = run_one(frames, decoder, dictionary, args.level, Path(tmp), resolution)
                jsonl_here = jsonl if frames is pairs else baselines(frames, decoder)[1]
                bound = value_bound(frames) if mode == "default" else None
                result.update(log=Path(log.path).name, mode=mode, frames=len(pairs), candump_zstd=candump,
                              value_bound=bound,
                              jsonl_zstd=jsonl_here, ratio_a=result["bytes"] / candump,
                              ratio_b=result["bytes"] / jsonl_here, transport_signals=len(keys))
                results.append(result)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"zstd level {args.level}; targets: (a) <= {TARGET_A}, (b) <= {TARGET_B} (stretch {STRETCH_B} with dict),"
          f" >= {TARGET_RATE:,} samples/s")
    print(f"{'log':<46} {'mode':<7} {'frames':>6} {'samples':>7} {'batches':>7} {'bytes':>6} {'B/sample':>8} "
          f"{'(a)':>6} {'(b)':>6} {'lossless':>8} {'samples/s':>10}")
    for r in results:
        mark_a = "" if r["ratio_a"] <= TARGET_A else "!"
        mark_b = "" if r["ratio_b"] <= TARGET_B else "!"
        print(f"{r['log']:<46} {r['mode']:<7} {r['frames']:>6} {r['samples']:>7} {r['batches']:>7} {r['bytes']:>6} "
              f"{r['bytes_per_sample']:>8.4f} {r['ratio_a']:>5.3f}{mark_a or ' '} {r['ratio_b']:>5.3f}{mark_b or ' '}"
              f" {'yes' if r['lossless'] else 'NO':>8} {r['rate']:>10,.0f}")
    print("(! = target missed; mode -tr = dict without the transport signals (counters, checksums) the agent "
          "leaves out of uploads by default; mode default = -tr with timestamps to the agent's default "
          f"{DEFAULT_TIME_RESOLUTION_US} us (batching.time_resolution_us); (a) stays against candump of the same "
          "whole frames, microsecond timestamps)")
    for r in results:
        if r["mode"] == "default":
            mark = "" if r["ratio_a"] <= TARGET_A_NO_TRANSPORT else " (goal missed)"
            print(f"  {r['log']}: {r['transport_signals']} transport signals; (a) {r['ratio_a']:.3f} "
                  f"vs goal <= {TARGET_A_NO_TRANSPORT}{mark}; the value columns' entropy alone: "
                  f"{r['value_bound'] / r['candump_zstd']:.3f}")
    return 0 if all(r["lossless"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
