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


# The service reads live buses only, but python-can imports asammdf (with numpy, pandas and pyarrow: about
# 100 MB of RSS and a second of start-up) at ``import can`` whenever it is installed, for its MF4 reader.
# In a ``run`` process it is kept out: the MF4 stack is for the engineers' commands (replay, convert, ...).
SERVICE_COMMANDS = frozenset({"run"})
MF4_STACK = "asammdf"


def keep_mf4_stack_out(argv: list[str], modules: dict) -> bool:
    """For a service command, make ``import asammdf`` fail (python-can then leaves MF4 out); True if it did.
    Must run before anything imports ``can``; a process that already loaded asammdf keeps it."""
    words = [arg for arg in argv if not arg.startswith("-")]  # only -v/--verbose may come before the command
    if not words or words[0] not in SERVICE_COMMANDS or MF4_STACK in modules:
        return False
    modules[MF4_STACK] = None  # the import system's "not importable" marker
    return True


def build_parser():
    return framework.build_parser("vehicle-agent", "In-vehicle CAN edge data agent", SUBCOMMANDS)


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # a process of its own (console script, python -m): not a caller's interpreter
        keep_mf4_stack_out(sys.argv[1:], sys.modules)
    return framework.run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
