"""``vehicle-agent record``: write what a live bus carries to a log file.

The file format follows the suffix (python-can's ``can.Logger``: candump for
.log, Vector for .asc/.blf, ...).  Recording stops after ``--count`` frames,
after ``--idle-timeout`` seconds without a frame, after ``--duration``, or on
Ctrl-C / SIGTERM; the frames received so far are always written.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

import can

from agent.cli.busargs import add_live_bus_arguments, live_bus_specs
from agent.cli.framework import add_command
from agent.sources.bus_open import open_bus
from agent.sources.live import LiveSource
from agent.timespec import duration_type


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "record", "record a live bus to a log file", examples=(
        "vehicle-agent record -i socketcan -c can0 -b 500000 -o drive.log --duration 60",
        "vehicle-agent record --bus socketcand://127.0.0.1:29536/can0 -o bench.asc --count 1000",
    ), description="The file format follows the suffix (.log candump, .asc, .blf, .trc, .csv). The frames "
                   "received so far are always written, whatever ends the recording.")
    add_live_bus_arguments(parser)
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="log file (.log = candump, .asc, .blf)")
    parser.add_argument("--count", type=int, default=0, metavar="N", help="stop after N frames")
    parser.add_argument("--idle-timeout", type=duration_type("--idle-timeout"), default=None, metavar="TIME",
                        help="stop after this long without a frame (5s, 1m)")
    parser.add_argument("--duration", type=duration_type("--duration"), default=None, metavar="TIME",
                        help="stop after this long (90s, 10m, 2h)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.count < 0:
        raise ValueError(f"--count must be >= 0, got {args.count}")
    specs = live_bus_specs(args)
    output = Path(args.output)
    if not output.parent.is_dir():
        raise ValueError(f"{output}: directory {output.parent} does not exist")
    if args.verbose == 0:
        # python-can's socketcand client warns on every TCP read that ends mid-frame.
        logging.getLogger("can.interfaces.socketcand").setLevel(logging.ERROR)

    buses: dict[str, can.BusABC] = {}
    try:
        for name, kwargs in specs:
            buses[name] = open_bus(kwargs)
    except ValueError:
        for bus in buses.values():
            bus.shutdown()
        raise
    source = LiveSource(buses, idle_timeout=args.idle_timeout)
    # SIGTERM ends the recording like Ctrl-C (the file is kept); handlers only work on the main thread.
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: source.stop()) if on_main_thread else None
    writer = can.Logger(str(output))
    counts = dict.fromkeys(buses, 0)
    received = 0
    timer = threading.Timer(args.duration, source.stop) if args.duration is not None else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        for bus, msg in source:
            writer.on_message_received(msg)
            counts[bus] += 1
            received += 1
            if received == args.count:
                break
    except KeyboardInterrupt:
        pass  # keep what was received
    finally:
        if timer is not None:
            timer.cancel()
        source.close()
        writer.stop()
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous_handler)
    dropped = sum(source.dropped.values())
    per_bus = ", ".join(f"{name} {n}" for name, n in counts.items())
    print(f"recorded {received} frames to {output} ({per_bus}); dropped {dropped}", flush=True)
    for error in source.errors:
        print(f"vehicle-agent record: bus error: {error}")
    return 1 if dropped or source.errors else 0
