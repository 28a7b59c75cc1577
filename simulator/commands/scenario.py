"""``vehicle-sim scenario hard-brake|sentry``: a drive with an incident and matching camera events.

As a log (``-o drive.log``: candump log, camera records in ``--camera-dir``,
ground truth in ``drive.scenario.json``) and/or on a bus (``--to URL``, paced
in real time by default).  On a bus the scenario starts now, and each camera
record is dropped into ``--spool`` (the agent's camera spool) when the drive
reaches its time, written as a camera system must: temporary name, then
atomic rename.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from agent.cli.framework import add_command
from simulator.commands.replay import parse_speed
from simulator.replay import Pacer, ReplayOptions, open_target
from simulator.scenario import DEFAULT_START_TIME, SCENARIOS, build_scenario, write_event, write_scenario
from simulator.socketcand_server import UnsupportedFrameError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "scenario", "generate a drive with an incident and camera events (hard-brake, sentry)", examples=(
            "vehicle-sim scenario hard-brake -o drive.log",
            "vehicle-sim scenario sentry --to socketcand://127.0.0.1:29536/can0 --spool /run/vehicle-agent/camera",
        ),
        description="Generate a scripted drive on the CSS Electronics demo truck: a hard brake ending in a "
                    "collision, or a parked car in sentry mode that gets bumped; with matching camera events.")
    parser.add_argument("name", choices=SCENARIOS, metavar="NAME", help=" | ".join(SCENARIOS))
    parser.add_argument("-o", "--output", default=None, metavar="LOG", help="write the drive to this log file")
    parser.add_argument("--camera-dir", default=None, metavar="DIR",
                        help="where the camera event records go (default: LOG's directory/<stem>-camera)")
    parser.add_argument("--to", default=None, metavar="URL",
                        help="also send the drive onto a bus: virtual://NAME, socketcand://127.0.0.1:PORT, "
                             "socketcan://CHANNEL")
    parser.add_argument("--spool", default=None, metavar="DIR",
                        help="with --to: drop each camera record into this spool directory at its time")
    parser.add_argument("--speed", default="1.0", type=parse_speed, help="with --to: 1.0 = real time, max = no pacing")
    parser.add_argument("--per-bus", action="store_true", help="with --to: each log channel on its own channel")
    parser.add_argument("--wait-clients", type=int, default=1, metavar="N",
                        help="socketcand: clients to wait for before sending (default 1)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    parser.set_defaults(func=run)


def _say(line: str) -> None:
    print(f"vehicle-sim scenario: {line}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    if args.output is None and args.to is None:
        raise ValueError("give -o LOG (write a log) and/or --to URL (send onto a bus)")
    if args.spool and not args.to:
        raise ValueError("--spool needs --to (the records of a log are written to --camera-dir)")
    live = args.to is not None
    # On a bus the drive happens now: frame and camera times are today's, as the agent sees them.
    start = round(time.time(), 3) if live else DEFAULT_START_TIME
    scenario = build_scenario(args.name, args.seed, start)
    if args.output:
        log_path = Path(args.output)
        stem = log_path.name.split(".")[0]
        camera_dir = Path(args.camera_dir) if args.camera_dir else log_path.parent / f"{stem}-camera"
        truth = write_scenario(scenario, log_path, camera_dir)
        frames = ", ".join(f"{channel} {count}" for channel, count in sorted(truth["frames"].items()))
        _say(f"wrote {log_path} ({frames} frames), {len(scenario.events)} camera records in {camera_dir}")
        print(f"incident: brake at {truth['brake_at']}, impact at {truth['impact_at']}")
    if live:
        return _send(scenario, args)
    return 0


def _send(scenario, args: argparse.Namespace) -> int:
    options = ReplayOptions(speed=args.speed, per_bus=args.per_bus, wait_clients=args.wait_clients)
    target = open_target(args.to, options, announce=_say)
    pending = sorted(scenario.events, key=lambda event: event.time)
    spool = Path(args.spool) if args.spool else None
    pacer = Pacer(args.speed)
    sent = skipped = 0
    try:
        for msg in scenario.frames():
            pacer.wait(msg.timestamp)
            while pending and pending[0].time <= msg.timestamp:
                event = pending.pop(0)
                if spool is not None:
                    write_event(event, spool)
                    _say(f"camera record {event.event_id} dropped into {spool}")
            try:
                target.send(msg.channel, msg)
                sent += 1
            except UnsupportedFrameError:
                skipped += 1
        for event in pending:
            if spool is not None:
                write_event(event, spool)
    finally:
        target.close()
    dropped = target.dropped()
    print(f"sent {sent} frames of scenario {scenario.name} to {args.to}"
          + (f"; {skipped} skipped" if skipped else "") + (f"; DROPPED {dropped}" if dropped else ""))
    return 1 if dropped else 0
