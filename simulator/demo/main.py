"""``vehicle-agent demo``: the whole product on a real log, end to end, with a readable summary.

Default (no options): the bundled real log (a J1939 truck with a GPS module)
1. under the default consent (China profile: nothing personal leaves the car),
2. after the owner grants driving and vehicle health for 7 days and location at
   ``city`` precision,
3. then a hard-brake drive: the incident snapshot and its signed owner export.
``--consent FILE`` or ``--grant-all`` run step 1 under that consent instead;
``--log LOG --dbc FILE...`` replays any log.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from agent.privacy import ConsentPolicy, ConsentStore
from agent.sources.log import LogSource
from simulator.broker import LocalBroker
from simulator.demo.incident import format_incident, run_incident
from simulator.demo.phase import run_phase
from simulator.demo.setup import DemoInput, bundled_input, log_input
from simulator.demo.summary import format_phase, json_report


@dataclass
class DemoOptions:
    log: Path | None = None
    dbc: tuple[Path, ...] = ()
    consent: Path | None = None
    grant_all: bool = False
    speed: str = "20"
    report_json: Path | None = None
    workdir: Path | None = None
    incident: bool = True


def candump_text_bytes(demo: DemoInput) -> int:
    """Size of the log's frames as candump text: the baseline for "bytes saved"."""
    total = 0
    for bus, msg in LogSource(demo.log, bus_map=demo.bus_map):
        ident = f"{msg.arbitration_id:08X}" if msg.is_extended_id else f"{msg.arbitration_id:03X}"
        total += len(f"({msg.timestamp:.6f}) {bus} {ident}#{bytes(msg.data).hex().upper()}\n")
    return total


def owner_grants(directory: Path) -> Path:
    """What an owner does with `vehicle-agent consent grant ...`, written as a consent state."""
    policy = ConsentPolicy(ConsentStore.in_dir(directory))
    policy.grant("vehicle_health", "7d", purpose="remote diagnostics")
    policy.grant("driving", "7d", purpose="driving-style insurance discount")
    policy.grant("location", "7d", level="city", purpose="regional traffic statistics")
    return directory / "consent.jsonl"


def run_demo(options: DemoOptions, say=print) -> dict:
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="vehicle-agent-demo-"))
    demo = log_input(options.log, list(options.dbc)) if options.log else bundled_input()
    baseline = candump_text_bytes(demo)
    frames = sum(demo.frames_per_bus.values())
    say(f"Demo log: {demo.log.name} ({frames} real CAN frames on "
        + ", ".join(f"{bus} {n}" for bus, n in demo.frames_per_bus.items()) + ")")
    say(f"Work directory: {workdir}")
    reports = []
    with LocalBroker(workdir / "broker") as broker:
        say(f"Mosquitto listening on 127.0.0.1:{broker.port}; simulator replays at speed {options.speed}\n")
        if options.consent or options.grant_all or options.log:
            title = ("bench mode: every category granted" if options.grant_all
                     else f"consent from {options.consent}" if options.consent else "default consent (China profile)")
            phases = [(title, options.consent)]
        else:
            phases = [("1. default consent (China profile): nothing personal leaves the car", None),
                      ("2. owner granted vehicle_health + driving (7d) and location at city level",
                       owner_grants(workdir / "owner-consent"))]
        previous = None
        for index, (title, consent) in enumerate(phases, start=1):
            result = run_phase(title, demo, workdir / f"run{index}", broker, options.speed,
                               consent_file=consent, grant_all=options.grant_all)
            say(format_phase(result, baseline, previous=previous, previous_index=index - 1) + "\n")
            previous = previous or result
            reports.append(json_report(result, baseline))
    incident = None
    if options.incident and not options.log:
        result = run_incident(workdir / "incident")
        say(format_incident(result))
        incident = {"snapshots": result.snapshots, "export": str(result.export_dir), "verified": result.verify_ok}
    report = {**reports[-1], "runs": reports, "incident": incident, "workdir": str(workdir)}
    if options.report_json:
        options.report_json.write_text(json.dumps(report, indent=2, default=str))
        say(f"\nJSON report: {options.report_json}")
    return report
