"""``vehicle-sim``: the vehicle simulator, one module per subcommand in ``simulator/commands/``.

Same convention as ``vehicle-agent``: each module defines ``register(subparsers)``,
which adds its parser and sets ``func`` to a ``run(args) -> int``.  Errors the user
can fix (``UserError``, ``ValueError`` subclasses, ``OSError``) print as one line.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Listed by name so that a missing or broken optional subcommand cannot break the others.
SUBCOMMANDS = (
    "simulator.commands.replay",
    "simulator.commands.generate",
    "simulator.commands.cloud",
    "simulator.commands.scenario",
)


class UserError(Exception):
    """An error the user can fix; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vehicle-sim", description="Vehicle simulator: CAN replay and synthesis")
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
    except (UserError, ValueError, OSError) as exc:
        print(f"vehicle-sim {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
