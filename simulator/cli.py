"""``vehicle-sim``: the vehicle simulator, one module per subcommand in ``simulator/commands/``."""

from __future__ import annotations

import sys

from agent.cli.framework import build_parser, run_cli

SUBCOMMANDS = tuple(f"simulator.commands.{name}"
                    for name in ("replay", "generate", "cloud", "scenario", "fleet", "ecu"))


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser("vehicle-sim", "Vehicle simulator: CAN replay and synthesis", SUBCOMMANDS), argv)


if __name__ == "__main__":
    sys.exit(main())
