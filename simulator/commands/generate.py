"""``vehicle-sim generate --dbc FILE -o OUT.log``: synthetic CAN traffic from a DBC."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.cli.framework import add_command
from agent.timespec import duration_type
from simulator.generate import DEFAULT_START_TIME, GenerateOptions, write_log


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "generate", "write a synthetic CAN log from a DBC", examples=(
            "vehicle-sim generate --dbc dbc/css-electronics/canmod-gps.dbc --duration 10m -o synth.log",
            "vehicle-sim generate --dbc a.dbc --dbc b.dbc --rate-scale 10 --seed 7 -o busy.blf",
        ),
        description="Every DBC message at its GenMsgCycleTime (default 100 ms), values moving smoothly within "
                    "the DBC min/max, multiplexed messages cycling through their multiplexer values. "
                    "The same --seed gives the same log.")
    parser.add_argument("--dbc", action="append", required=True, metavar="FILE", help="DBC file (repeatable)")
    parser.add_argument("--duration", type=duration_type("--duration"), default=60.0, metavar="TIME",
                        help="how much traffic: 90s, 10m, 2h (default 60 s)")
    parser.add_argument("--rate-scale", type=float, default=1.0, metavar="X",
                        help="send X times as often as the cycle times say (default 1.0)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    parser.add_argument("--channel", default="can0", help="channel name written to the log (default can0)")
    parser.add_argument("--start-time", type=float, default=DEFAULT_START_TIME, metavar="EPOCH",
                        help=f"timestamp of t=0 (default {DEFAULT_START_TIME:.0f})")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="log file (.log = candump, .asc, .blf)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if not output.parent.is_dir():
        raise ValueError(f"{output}: directory {output.parent} does not exist")
    options = GenerateOptions(duration=args.duration, rate_scale=args.rate_scale, seed=args.seed,
                              channel=args.channel, start_time=args.start_time)
    counts = write_log(args.dbc, output, options)
    print(f"wrote {sum(counts.values())} frames of {len(counts)} messages ({args.duration:g} s) to {output}")
    return 0
