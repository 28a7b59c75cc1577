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
from collections.abc import Sequence

from agent.service.exitcodes import EXIT_INTERRUPTED, EXIT_SOFTWARE, exit_code_for
from agent.service.journal import configure_logging, error_line


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
