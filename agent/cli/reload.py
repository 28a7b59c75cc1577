"""``vehicle-agent reload``: ask the running agent to re-read its config (like SIGHUP)."""

from __future__ import annotations

import argparse

from agent.cli.consent import add_state_arguments
from agent.cli.framework import add_command
from agent.cli.status import call_agent


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "reload", "re-read config and rules in the running agent", examples=(
        "vehicle-agent reload --config /etc/vehicle-agent/agent.yaml",
        "systemctl reload vehicle-agent   # the same, through systemd (SIGHUP)",
    ), description="An invalid new configuration is rejected and logged; the running one is kept.")
    add_state_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    call_agent(args, "reload")
    print("reload requested; an invalid config is rejected and logged, the running one kept")
    return 0
