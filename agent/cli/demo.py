"""``vehicle-agent demo``: simulator -> agent -> local Mosquitto -> reference receiver on a real log."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from agent.cli.framework import add_command


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "demo", "replay a real log through the agent into a local broker and show what arrived",
        examples=("vehicle-agent demo", "vehicle-agent demo --speed max --report-json demo.json",
                  "vehicle-agent demo --log drive.asc --dbc vehicle.dbc --grant-all"),
        description="Starts Mosquitto on a free loopback port, serves the log over socketcand (simulator "
                    "process), runs the agent on it and checks every batch at the reference receiver.")
    parser.add_argument("--log", type=Path, help="any CAN log (default: the bundled real truck log)")
    parser.add_argument("--dbc", type=Path, nargs="+", default=[], help="DBC files for --log (all buses)")
    parser.add_argument("--consent", type=Path, metavar="FILE", help="run under this consent state (consent.jsonl)")
    parser.add_argument("--grant-all", action="store_true", help="bench mode: every category granted")
    parser.add_argument("--speed", default="20", help="replay speed: 1.0 real time, 20 (default), max")
    parser.add_argument("--report-json", type=Path, metavar="FILE", help="also write the report as JSON")
    parser.add_argument("--workdir", type=Path, help="keep broker, state and receiver files here")
    parser.add_argument("--no-incident", action="store_true", help="skip the incident/export part")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from simulator.demo.main import DemoOptions, run_demo

    if args.log and not args.dbc:
        raise ValueError("--log needs --dbc FILE...")
    logging.getLogger("can.interfaces.socketcand").setLevel(logging.ERROR)
    if args.verbose == 0:
        # Expected in a demo, and the summary says what matters: each phase's agent makes a new signing key
        # (the export part shows its fingerprint), the replayed buses end when the log does, an incident fires.
        for name in ("agent.incident.snapshot", "agent.export.signing", "agent.sources.live"):
            logging.getLogger(name).setLevel(logging.ERROR)
    report = run_demo(DemoOptions(args.log, tuple(args.dbc), args.consent, args.grant_all, args.speed,
                                  args.report_json, args.workdir, not args.no_incident))
    received, sent = report["received"], report["sent"]
    ok = received["batches"] == sent["batches"] and received["corrupt"] == 0
    if report.get("incident") is not None:
        ok = ok and report["incident"]["verified"]
    return 0 if ok else 1
