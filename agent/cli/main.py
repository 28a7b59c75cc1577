"""``vehicle-agent``: one module per subcommand (see ``agent/cli/framework.py``)."""

from __future__ import annotations

import sys

from agent.cli import framework

SUBCOMMANDS = tuple(f"agent.cli.{name}" for name in (
    "decode", "stats", "catalog", "record", "replay", "inspect", "buffer",            # engineers
    "plot", "monitor", "convert", "dump", "listing",                                  # engineers' tools
    "run", "status", "reload", "demo", "shipped",                                     # the service
    "consent", "ledger", "export", "incidents", "identity", "owner",                  # owners
))


def build_parser():
    return framework.build_parser("vehicle-agent", "In-vehicle CAN edge data agent", SUBCOMMANDS)


def main(argv: list[str] | None = None) -> int:
    return framework.run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
