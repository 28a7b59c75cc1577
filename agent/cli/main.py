"""``vehicle-agent``: one module per subcommand (as cantools' ``subparsers/``).

Each subcommand module defines ``register(subparsers)``, which adds its parser
and sets ``func`` to a ``run(args) -> int``.  Errors that users can fix are
raised as ``UserError`` (or ``ValueError`` subclasses such as ConfigError) and
printed as one line, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# Listed by name so that a broken optional subcommand cannot break the others.
SUBCOMMANDS = (
    "agent.cli.decode",
    "agent.cli.stats",
    "agent.cli.catalog",
    "agent.cli.record",
    "agent.cli.replay",
    "agent.cli.inspect",
    "agent.cli.buffer",
    "agent.cli.run",
    "agent.cli.status",
    "agent.cli.demo",
    "agent.cli.consent",
    "agent.cli.ledger",
    "agent.cli.export",
    "agent.cli.incidents",
    "agent.cli.reload",
)


class UserError(Exception):
    """An error the user can fix; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vehicle-agent", description="In-vehicle CAN edge data agent")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # subcommand not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # Output piped into `head` and friends: stop quietly, as cat does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (UserError, ValueError, OSError) as exc:
        print(f"vehicle-agent {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
