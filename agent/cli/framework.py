"""The command-line frame shared by ``vehicle-agent`` and ``vehicle-sim``.

Each subcommand is a module defining ``register(subparsers)``, which adds its
parser and sets ``func`` to a ``run(args) -> int`` (as cantools' ``subparsers/``).
Errors a user can fix (``ValueError`` subclasses such as ConfigError, ``OSError``)
print as one line naming the command, never as a traceback.  The exit status
says what kind of failure it was (``agent.service.exitcodes``): 2 for a
configuration error (systemd does not restart the service), 75 for a temporary
one (it does), 1 for a bug (traceback in the log).  When stderr is the journal,
every line carries its syslog priority (``agent.service.journal``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import textwrap
from collections.abc import Sequence

from agent.service.exitcodes import EXIT_INTERRUPTED, EXIT_SOFTWARE, exit_code_for
from agent.service.journal import configure_logging, error_line


def add_command(subparsers: argparse._SubParsersAction, name: str, summary: str, examples: Sequence[str],
                description: str | None = None, notes: str = "", **kwargs) -> argparse.ArgumentParser:
    """A subcommand parser with what every ``--help`` shows: a one-line summary (also the line in the
    parent's list), the longer description when there is one, and at least one example to copy; ``notes``
    (e.g. the exit statuses) follow the examples."""
    if not examples:
        raise ValueError(f"subcommand {name!r} needs at least one example for its --help")
    epilog = "examples:\n" + "\n".join(f"  {example}" for example in examples) + (f"\n\n{notes}" if notes else "")
    text = summary[0].upper() + summary[1:] + "."
    if description:  # the raw formatter keeps the examples' layout, so wrap the prose here
        text += "\n\n" + "\n\n".join(part if part.startswith(" ") else textwrap.fill(part, 79)
                                     for part in description.split("\n\n"))
    return subparsers.add_parser(name, help=summary, description=text, epilog=epilog,
                                 formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def build_parser(prog: str, description: str, subcommands: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in subcommands:
        importlib.import_module(name).register(subparsers)
    return parser


def run_cli(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    args = parser.parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    journal = configure_logging(level)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # Output piped into `head` and friends: stop quietly, as cat does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, OSError) as exc:
        error_line(f"{parser.prog} {args.command}: error: {exc}", journal)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        code = exit_code_for(exc)  # e.g. sqlite3.OperationalError "database is locked": temporary
        if code == EXIT_SOFTWARE:
            logging.getLogger(parser.prog).critical("%s %s: unexpected error", parser.prog, args.command,
                                                    exc_info=True)
        else:
            error_line(f"{parser.prog} {args.command}: error: {type(exc).__name__}: {exc}", journal)
        return code
