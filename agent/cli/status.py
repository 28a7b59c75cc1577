"""``vehicle-agent status``: counters of the running agent, over its control socket."""

from __future__ import annotations

import argparse
import json
import time

from agent.cli.consent import add_state_arguments, state_from_args
from agent.cli.framework import add_command
from agent.control import ControlClient, control_socket_path
from agent.service.resources import format_duration
from agent.timespec import iso_local


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "status", "show the running agent's counters", examples=(
        "vehicle-agent status --config /etc/vehicle-agent/agent.yaml",
        "vehicle-agent status --state /var/lib/vehicle-agent --json",
    ), description="Times are local ISO 8601; --json keeps epoch seconds for machines.")
    add_state_arguments(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def call_agent(args: argparse.Namespace, command: str) -> object:
    state_dir, _ = state_from_args(args)
    path = control_socket_path(state_dir)
    try:
        return ControlClient(path).call(command)
    except (FileNotFoundError, ConnectionRefusedError):
        raise ValueError(f"{path}: the agent is not running (no control socket)") from None


def _human(status: dict) -> str:
    lines = [f"vehicle {status['vehicle']}, up {format_duration(status['uptime_s'])}"
             f" (since {iso_local(time.time() - status['uptime_s'])}), "
             f"RSS {status['resources'].get('rss_bytes', 0) / 1e6:.1f} MB, "
             f"CPU {status['resources'].get('cpu_seconds', '?')} s"]
    pipeline = status["pipeline"]
    lines.append(f"frames in {pipeline['frames_in']}, batches written {pipeline['batches_written']}, "
                 f"samples {pipeline['samples_written']}")
    for bus, state in (status.get("buses") or {}).items():
        if state.get("state") != "open":
            retry = f", retry in {state['retry_in_s']:.0f} s" if "retry_in_s" in state else ""
            lines.append(f"  bus {bus} {state.get('state')}: {state.get('reason', '?')}{retry}")
    for bus, counts in pipeline["decode"].items():
        dropped = status.get("dropped_at_bus", {}).get(bus, 0)
        rate = status.get("frames_per_s", {}).get(bus, 0.0)
        lines.append(f"  bus {bus}: {rate} frames/s; " + ", ".join(f"{k} {v}" for k, v in counts.items())
                     + f", dropped {dropped}")
    for item in status["buffer"]["backlog"]:
        lines.append("  backlog " + ", ".join(f"{k} {v}" for k, v in item.items()))
    lines.append("  buffer: " + ", ".join(f"{k} {v}" for k, v in status["buffer"]["counters"].items()))
    up = status["uplink"]
    lines.append(f"uplink {up.get('state')}: acked {up.get('acked', 0)}, in flight {up.get('in_flight', 0)}, "
                 f"last PUBACK {iso_local(up.get('last_puback_time'))}")
    granted = ", ".join(status["consent"]["granted"]) or "nothing"
    lines.append(f"consent v{status['consent']['version']}: granted {granted}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    status = call_agent(args, "status")
    print(json.dumps(status, indent=2, default=str) if args.json else _human(status))
    return 0
