"""``vehicle-sim ecu SCRIPT.yaml --bus URL``: a scripted OBD-II / UDS ECU on a bus (simulator.ecu)."""

from __future__ import annotations

import argparse
import sys
import time

from agent.cli.framework import add_command
from agent.sources.bus_open import bus_kwargs_from_url, open_bus
from agent.timespec import duration_type
from simulator.ecu import ScriptedEcu, load_script


def _can_id(text: str) -> int:
    value = int(text, 0)
    if not 0 <= value <= 0x7FF:
        raise argparse.ArgumentTypeError(f"an 11-bit CAN id (0x000-0x7FF), got {text}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "ecu", "answer OBD-II and UDS DTC requests from a script (a test ECU)", examples=(
            "vehicle-sim ecu ecu.yaml --bus virtual://obd",
            "vehicle-sim ecu ecu.yaml --bus socketcan://vcan0 --request-id 0x7E1 --response-id 0x7E9 --duration 10m",
        ),
        description="Answers mode 01 PIDs, the DTC lists of modes 03/07/0A and UDS ReadDTCInformation 0x19 0x02 "
                    "from a YAML script (see simulator/ecu.py), through a real ISO-TP stack: multi-frame answers "
                    "wait for the tester's flow control. Script time starts when the command does.")
    parser.add_argument("script", metavar="SCRIPT.yaml", help="the ECU script")
    parser.add_argument("--bus", required=True, metavar="URL", help="virtual://NAME or socketcan://CHANNEL")
    parser.add_argument("--request-id", type=_can_id, default=0x7E0, metavar="ID",
                        help="physical request id (default 0x7E0; 0x7DF functional is always heard)")
    parser.add_argument("--response-id", type=_can_id, default=0x7E8, metavar="ID", help="default 0x7E8")
    parser.add_argument("--duration", type=duration_type("--duration"), default=None, metavar="TIME",
                        help="stop after this long (default: until interrupted)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    script = load_script(args.script)
    kwargs = bus_kwargs_from_url(args.bus)
    if kwargs.get("interface") not in ("virtual", "socketcan"):
        raise ValueError(f"{args.bus}: the ECU needs a bus it can write: virtual://NAME or socketcan://CHANNEL")
    bus = open_bus(kwargs)
    try:
        with ScriptedEcu(bus, script, request_id=args.request_id, response_id=args.response_id) as ecu:
            print(f"vehicle-sim ecu: answering 0x{args.request_id:X} and 0x{ecu.functional_id:X} on 0x"
                  f"{args.response_id:X} ({args.bus})", file=sys.stderr, flush=True)
            deadline = None if args.duration is None else time.monotonic() + args.duration
            try:
                while deadline is None or time.monotonic() < deadline:
                    time.sleep(0.05 if deadline is None else min(0.05, max(0.0, deadline - time.monotonic())))
            except KeyboardInterrupt:
                pass
            print(f"vehicle-sim ecu: {len(ecu.requests)} request(s), {len(ecu.responses)} answer(s)",
                  file=sys.stderr, flush=True)
    finally:
        bus.shutdown()
    return 0
