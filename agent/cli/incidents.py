"""``vehicle-agent incidents``: list the incident snapshots stored in the car.

    vehicle-agent incidents --config agent.yaml [--json]
    vehicle-agent incidents --state DIR [--json]

Snapshots are kept whatever the consent (they leave the car only with
``incident`` consent); export one with ``vehicle-agent export --incident ID``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agent.cli.framework import add_command
from agent.config import load_config
from agent.incident.config import IncidentConfig, incident_config
from agent.incident.store import IncidentInfo, IncidentStore
from agent.timespec import iso_local


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "incidents", "list stored incident snapshots", examples=(
        "vehicle-agent incidents --config /etc/vehicle-agent/agent.yaml",
        "vehicle-agent incidents --state /var/lib/vehicle-agent --json",
    ), description="Each snapshot keeps the raw frames and decoded samples around a trigger; export one with "
                   "`vehicle-agent export --incident ID`.")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--config", metavar="FILE", help="agent configuration (its state dir and incidents.dir)")
    where.add_argument("--state", metavar="DIR", help="the agent's state directory (incidents in DIR/incidents)")
    parser.add_argument("--json", action="store_true", help="one JSON object per snapshot")
    parser.set_defaults(func=run)




def _as_json(info: IncidentInfo) -> dict:
    return {"id": info.id, "trigger": info.trigger.name, "time": info.trigger.timestamp, "reason": info.trigger.reason,
            "triggers": [hit.name for hit in info.triggers], "start": info.start, "end": info.end,
            "categories": list(info.categories), "complete": info.complete, "problems": list(info.problems),
            "raw_frames": info.raw_frames, "samples": info.samples, "bytes": info.size_bytes,
            "uploaded_at": info.uploaded_at}


def store_from_args(args: argparse.Namespace) -> IncidentStore:
    if args.config:
        config = load_config(args.config)
        incidents = incident_config(config)
        state_dir = config.resolve(config.state.dir)
    elif args.state:
        incidents = IncidentConfig()
        state_dir = Path(args.state)
    else:
        raise ValueError("say where the agent keeps its state: --state DIR or --config FILE")
    return IncidentStore.from_config(state_dir, incidents, create=False)


def run(args: argparse.Namespace) -> int:
    store = store_from_args(args)
    infos = store.list()
    if args.json:
        for info in infos:
            print(json.dumps(_as_json(info)))
        return 0
    if not infos:
        print(f"no incident snapshots in {store.dir}")
        return 0
    print(f"{'ID':<40} {'TRIGGER TIME (LOCAL)':<29} {'TRIGGERS':<28} {'FRAMES':>7} {'SAMPLES':>8} "
          f"{'KB':>7}  STATE")
    for info in infos:
        names = ",".join(dict.fromkeys(hit.name for hit in info.triggers))
        state = "complete" if info.complete else "INCOMPLETE: " + "; ".join(info.problems)
        state += ", uploaded" if info.uploaded_at else ", not uploaded"
        stamp = iso_local(info.trigger.timestamp, "milliseconds")
        print(f"{info.id:<40} {stamp:<29} {names[:28]:<28} {info.raw_frames:>7} "
              f"{info.samples:>8} {info.size_bytes // 1024:>7}  {state}")
    return 0
