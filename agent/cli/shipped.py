"""``vehicle-agent shipped``: the files the package carries (DBCs, catalogs, example config, systemd unit,
demo log), and a way to take one out of an installed wheel."""

from __future__ import annotations

import argparse
import sys

from agent import shipped
from agent.cli.framework import add_command


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "shipped", "list or print the files the package ships", examples=(
        "vehicle-agent shipped",
        "vehicle-agent shipped config/vehicle-agent.service > /etc/systemd/system/vehicle-agent.service",
        "vehicle-agent shipped dbc/kona-ev/pcan.dbc --path",
    ), description="Without NAME: every shipped file and where it is. With NAME: its content on standard output "
                   "(or its path with --path), e.g. to install the systemd unit or start from the example config.")
    parser.add_argument("name", nargs="?", metavar="NAME", help="a name as the listing shows it")
    parser.add_argument("--path", action="store_true", help="print the file's path instead of its content")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    files = shipped.listing()
    if args.name is None:
        width = max(len(name) for name in files)
        for name, path in files.items():
            print(f"{name:<{width}}  {path}")
        return 0
    path = files.get(args.name)
    if path is None:
        raise shipped.ShippedFileMissing(f"{args.name}: not a shipped file; shipped: {', '.join(files)}")
    if args.path:
        print(path)
    else:
        sys.stdout.buffer.write(path.read_bytes())
    return 0
