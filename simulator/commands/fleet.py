"""``vehicle-sim fleet --vehicles N --broker 127.0.0.1:PORT``: many simulated vehicles uploading to one broker."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agent.cli.framework import add_command
from agent.netlocal import is_loopback
from agent.timespec import duration_type
from simulator.commands.replay import parse_speed
from simulator.fleet import FleetOptions, run_fleet


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "fleet", "run N simulated vehicles (the agent's data path and uplink) against a broker",
        examples=("vehicle-sim fleet --vehicles 20 --duration 60s --broker 127.0.0.1:1883",
                  "vehicle-sim fleet --vehicles 100 --processes 4 --speed max --seed 7 --broker 127.0.0.1:1883 "
                  "--json"),
        description="Each vehicle has its own pseudonymous id, boot id, consent (granted categories vary by "
                    "--seed) and buffer, and replays a real log (the bundled CSS truck log; the Kona EV "
                    "COMP-CAN log too when the shared data is found) from its own starting point, through the "
                    "agent's Collector, PrivacyFilter, Batcher and BatchStore, and uploads with the agent's "
                    "Uplink (MQTT v5, QoS 1) under vehicles/<id>/. Plaintext MQTT: loopback brokers only.",
        notes="exit status: 0 every committed batch was acknowledged (PUBACK); 1 some were not within "
              "--ack-timeout")
    parser.add_argument("--vehicles", type=int, default=5, metavar="N", help="number of vehicles (default 5)")
    parser.add_argument("--duration", type=duration_type("--duration"), default=60.0, metavar="TIME",
                        help="driving time per vehicle: 60s, 5m (default 60 s)")
    parser.add_argument("--broker", required=True, metavar="HOST:PORT", type=parse_broker,
                        help="the MQTT broker, on loopback (e.g. 127.0.0.1:1883)")
    parser.add_argument("--processes", type=int, default=1, metavar="P", help="worker processes (default 1)")
    parser.add_argument("--speed", default="max", type=parse_speed,
                        help="max = as fast as it goes (default); 1 = each vehicle in real time")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="picks logs' starting points and each vehicle's consent (default 0)")
    parser.add_argument("--logs", default="", metavar="NAME,...", help="only these logs: truck, kona (default all)")
    parser.add_argument("--data", metavar="DIR", help="shared data directory (default $VEHICLE_SIM_DATA or "
                                                      "shared/data beside the checkout)")
    parser.add_argument("--batch-age", type=float, default=10.0, metavar="S", help="batch time span (default 10)")
    parser.add_argument("--ack-timeout", type=duration_type("--ack-timeout"), default=60.0, metavar="TIME",
                        help="wait this long after the last batch for outstanding PUBACKs (default 60 s)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def parse_broker(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    host = host.strip("[]")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    if not is_loopback(host):
        raise argparse.ArgumentTypeError(f"{host} is not a loopback address: the fleet simulator speaks "
                                         "plaintext MQTT to loopback brokers only")
    return host, int(port)


def run(args: argparse.Namespace) -> int:
    host, port = args.broker
    options = FleetOptions(vehicles=args.vehicles, duration=args.duration, broker_host=host, broker_port=port,
                           processes=args.processes, speed=args.speed, seed=args.seed,
                           logs=tuple(name.strip() for name in args.logs.split(",") if name.strip()),
                           data_dir=Path(args.data) if args.data else None, batch_age_s=args.batch_age,
                           ack_timeout=args.ack_timeout)
    report = run_fleet(options)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(report.summary())
    if not report.ok:
        print(f"vehicle-sim fleet: {report.batches_unacked} committed batch(es) not acknowledged within "
              f"{args.ack_timeout:g} s", file=sys.stderr)
        return 1
    return 0
