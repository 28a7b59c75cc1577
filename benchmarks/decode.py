"""Decode throughput on every shared real log.

Prints frames/s of (a) a bare loop of cantools ``Message.decode`` over the log's
frames (the reference: dict lookup by id, then decode), (b) our decode stage
on the same frames, (c) the whole ``vehicle-agent decode`` command (reading
the log and writing CSV to /dev/null), and the ratio (b)/(a).  Target: >= 1.0.

Run: ``python benchmarks/decode.py [--repeat N]``.
"""

from __future__ import annotations

import argparse
import time

import can
import cantools
from cantools.j1939 import pgn_from_frame_id
from common import REAL_PAIRS, SHARED_DATA  # benchmarks/common.py puts the repo on sys.path

from agent.cli.main import main as agent_main
from agent.dbc import load_dbc
from agent.decode import ALL_DBCS, Decoder


def read_frames(path):
    with can.LogReader(str(path)) as reader:
        return [msg for msg in reader if not (msg.is_error_frame or msg.is_remote_frame)]


def bare_cantools(frames, dbc_paths) -> float:
    by_id, by_pgn = {}, {}
    for path in dbc_paths:
        for message in cantools.database.load_file(str(path), strict=False).messages:
            by_id.setdefault((message.frame_id, message.is_extended_frame), message)
            if message.protocol == "j1939":
                by_pgn.setdefault(pgn_from_frame_id(message.frame_id), message)
    start = time.perf_counter()
    for msg in frames:
        message = by_id.get((msg.arbitration_id, msg.is_extended_id))
        if message is None and msg.is_extended_id and by_pgn:
            # J1939 logs: match on PGN, as cantools' own j1939 helpers allow.
            message = by_pgn.get(pgn_from_frame_id(msg.arbitration_id))
        if message is not None:
            try:
                message.decode(msg.data)
            except Exception:
                pass
    return time.perf_counter() - start


def our_stage(frames, dbc_paths) -> float:
    decoder = Decoder({ALL_DBCS: [load_dbc(p) for p in dbc_paths]})
    start = time.perf_counter()
    decode = decoder.decode
    for msg in frames:
        decode(msg, "can0")
    return time.perf_counter() - start


def whole_command(log, dbc_paths) -> float:
    start = time.perf_counter()
    agent_main(["decode", str(log), "--dbc", *map(str, dbc_paths), "-o", "/dev/null"])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="best of N timings")
    args = parser.parse_args()
    print(f"{'log':<48} {'frames':>7} {'(a) cantools':>13} {'(b) stage':>11} {'(c) command':>12} {'(b)/(a)':>8}")
    for log, dbcs in REAL_PAIRS:
        path = SHARED_DATA / log
        dbc_paths = [SHARED_DATA / d for d in dbcs]
        frames = read_frames(path)
        a = min(bare_cantools(frames, dbc_paths) for _ in range(args.repeat))
        b = min(our_stage(frames, dbc_paths) for _ in range(args.repeat))
        c = min(whole_command(path, dbc_paths) for _ in range(max(1, args.repeat // 2)))
        n = len(frames)
        print(f"{path.name:<48} {n:>7} {n / a:>11,.0f}/s {n / b:>9,.0f}/s {n / c:>10,.0f}/s {a / b:>8.2f}")


if __name__ == "__main__":
    main()
