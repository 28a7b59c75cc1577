"""Every subcommand's --help has a one-line description and at least one example to copy (argparse epilog)."""

from __future__ import annotations

import argparse

import pytest

from agent.cli.framework import build_parser
from agent.cli.main import SUBCOMMANDS as AGENT_COMMANDS
from simulator.cli import SUBCOMMANDS as SIM_COMMANDS


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...]):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*path, name), child
                yield from _walk(child, (*path, name))


def _all_commands():
    for prog, modules in (("vehicle-agent", AGENT_COMMANDS), ("vehicle-sim", SIM_COMMANDS)):
        for path, parser in _walk(build_parser(prog, "", modules), (prog,)):
            yield pytest.param(path, parser, id=" ".join(path))


COMMANDS = list(_all_commands())


def test_the_walk_finds_every_command_and_nested_action():
    names = {" ".join(param.values[0]) for param in COMMANDS}
    for expected in ("vehicle-agent decode", "vehicle-agent consent grant", "vehicle-agent consent zones add",
                     "vehicle-agent export verify", "vehicle-agent plot", "vehicle-agent monitor",
                     "vehicle-sim cloud anchor", "vehicle-sim replay"):
        assert expected in names
    assert len(names) >= 35


@pytest.mark.parametrize(("path", "parser"), COMMANDS)
def test_help_has_a_description_and_a_runnable_example(path, parser):
    text = parser.format_help()
    description = (parser.description or "").strip()
    assert description, f"{' '.join(path)}: no description"
    assert "\n" not in description.split("\n\n")[0], f"{' '.join(path)}: the first line is not one line"
    epilog = parser.epilog or ""
    assert epilog.startswith("examples:\n"), f"{' '.join(path)}: no examples"
    examples = [line.strip() for line in epilog.split("\n\n")[0].splitlines()[1:]]
    # A command may sit in a pipe: "candump -L can0 | vehicle-agent decode - ...", "... --json | jq".
    command = path[0] + " " + path[1]
    assert examples and all(any(part.startswith(command) for part in line.split(" | "))
                            or line.startswith("systemctl ") for line in examples), examples
    assert any(part.startswith(" ".join(path)) for line in examples for part in line.split(" | ")), \
        f"no example runs {' '.join(path)}"
    assert "examples:" in text
