"""``vehicle-sim replay LOG --to URL``: put a recorded log back on a bus."""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys
import threading
from collections.abc import Iterator

from agent.cli.framework import add_command
from agent.integrity.checker import layouts_from_dbcs
from agent.integrity.checksums import ALGORITHMS
from agent.integrity.infer import role_by_name
from agent.sources.log import LogSource
from agent.timespec import duration_type
from simulator.faults import FAULTS_HELP, TransportFaults, parse_fault_spec
from simulator.replay import ReplayOptions, open_target, replay


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "replay", "replay a CAN log onto a bus", examples=(
            "vehicle-sim replay drive.asc --to socketcand://127.0.0.1:29536/can0 --speed 10",
            "vehicle-sim replay drive.log --to virtual://bench --speed max --loop 0",
            "vehicle-sim replay kona.log --to virtual://bench --speed max --faults checksum=0.01,counter=0.01,seed=7 "
            "--dbc pcan=pcan.dbc --checksum VCU_109=nibble_sum",
        ),
        description="Replay a CAN log (candump .log, .asc, .blf, .trc, .csv, .gz) onto virtual://NAME, "
                    "socketcand://127.0.0.1:PORT (served here; port 0 picks one) or socketcan://CHANNEL.")
    parser.add_argument("log", metavar="LOG")
    parser.add_argument("--to", required=True, metavar="URL", help="target bus URL")
    parser.add_argument("--speed", default="1.0", type=parse_speed,
                        help="1.0 = real time, 10 = ten times faster, max = no sleeping (default 1.0)")
    parser.add_argument("--loop", type=int, default=1, metavar="N", help="passes over the log (0 = forever)")
    parser.add_argument("--bus-map", default="", metavar="CH=NAME,...",
                        help="name log channels (e.g. 0=truck,1=gps); only mapped channels are replayed")
    parser.add_argument("--per-bus", action="store_true",
                        help="keep buses apart: each on the channel named after it (socketcand: the clients "
                             "that opened that channel)")
    parser.add_argument("--wait-clients", type=int, default=1, metavar="N",
                        help="socketcand: clients to wait for before sending (default 1; 0 = do not wait)")
    parser.add_argument("--wait-timeout", type=duration_type("--wait-timeout"), default=30.0, metavar="TIME",
                        help="socketcand: give up waiting for clients after S seconds (default 30)")
    parser.add_argument("--faults", metavar="SPEC", help="inject faults: " + FAULTS_HELP.replace("%", "%%"))
    parser.add_argument("--dbc", nargs="+", action="extend", default=[], metavar="[BUS=]FILE",
                        help="DBCs of the replayed messages, for checksum= and counter= faults: counters and "
                             "checksums are the signals named so (Counter, AliveCnt, Checksum, CRC ...); "
                             "BUS=FILE applies a DBC to one bus only")
    parser.add_argument("--checksum", action="append", default=[], metavar="MESSAGE=ALGORITHM",
                        help="the checksum algorithm of a message whose DBC file name does not tell its family "
                             f"(one of {', '.join(ALGORITHMS)})")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def parse_speed(text: str) -> float:
    if text.strip().lower() == "max":
        return math.inf
    try:
        speed = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'max', got {text!r}") from None
    if not speed > 0 or math.isinf(speed):
        raise argparse.ArgumentTypeError(f"must be a positive number or 'max', got {text!r}")
    return speed


def parse_bus_map(text: str) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        channel, equals, bus = item.partition("=")
        if not equals or not channel.strip() or not bus.strip():
            raise ValueError(f"--bus-map: expected CHANNEL=NAME, got {item!r}")
        mapping[channel.strip()] = bus.strip()
    return mapping


def parse_checksums(items: list[str]) -> dict[str, str]:
    chosen: dict[str, str] = {}
    for item in items:
        message, equals, algorithm = (part.strip() for part in item.partition("="))
        if not equals or not message or algorithm not in ALGORITHMS:
            raise ValueError(f"--checksum: expected MESSAGE=ALGORITHM with one of {', '.join(ALGORITHMS)}, "
                             f"got {item!r}")
        chosen[message] = algorithm
    return chosen


def transport_faults(dbc_specs: list[str], checksums: dict[str, str]) -> TransportFaults:
    from agent.cli.common import load_dbcs  # the agent's DBC loading, only when --dbc is given

    def role(message: str, signal: str) -> str:
        return role_by_name(signal)

    layouts = layouts_from_dbcs(load_dbcs(dbc_specs), role, lambda message, signal: checksums.get(message))
    return TransportFaults(layouts)


def _announce(line: str) -> None:
    print(f"vehicle-sim replay: {line}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` (the replay then ends at the next frame and reports what it sent)
    instead of raising wherever the main thread happens to be."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    handler = lambda _signum, _frame: stop.set()  # noqa: E731
    previous = {number: signal.signal(number, handler) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def run(args: argparse.Namespace) -> int:
    if args.loop < 0:
        raise ValueError(f"--loop must be >= 0, got {args.loop}")
    checksums = parse_checksums(args.checksum)
    if checksums and not args.dbc:
        raise ValueError("--checksum names messages of the DBCs given with --dbc; no --dbc given")
    options = ReplayOptions(speed=args.speed, loop=args.loop, bus_map=parse_bus_map(args.bus_map),
                            per_bus=args.per_bus, wait_clients=args.wait_clients, wait_timeout=args.wait_timeout,
                            progress=not args.quiet and sys.stderr.isatty(),
                            faults=parse_fault_spec(args.faults) if args.faults else None,
                            transport=transport_faults(args.dbc, checksums) if args.dbc else None)
    LogSource(args.log)  # a missing or unreadable log fails before any server starts
    with _stop_on_signals(options.stop):
        target = open_target(args.to, options, announce=_announce)
        report = replay(args.log, target, options)
    print(report.summary(), flush=True)
    if report.log_error:
        print(f"vehicle-sim replay: error: {report.log_error}", file=sys.stderr)
        return 1
    if report.interrupted:
        return 130
    return 1 if report.dropped else 0
