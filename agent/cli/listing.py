"""``vehicle-agent list DBC``: the message names of a DBC, as ``cantools list`` prints them; with
``--signals`` each message's signals with the catalog's privacy category and VSS path."""

from __future__ import annotations

import argparse
import json
import sys

from agent.catalog import load_catalogs
from agent.cli.framework import add_command
from agent.dbc import load_dbc
from agent.decode import spec_for


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "list", "list a DBC's messages (and signals)", examples=(
        "vehicle-agent list dbc/kona-ev/pcan.dbc",
        "vehicle-agent list dbc/kona-ev/pcan.dbc --signals",
        "vehicle-agent list dbc/css-electronics/canmod-gps.dbc --signals --json",
    ), description="One message name per line, like `cantools list`. With --signals every signal follows its "
                   "message, with its unit, its catalog category and VSS path (NAME.catalog.yaml next to the "
                   "DBC, or --catalog). `vehicle-agent dump` shows the full layout.")
    parser.add_argument("dbc", metavar="DBC", help="DBC file")
    parser.add_argument("--signals", action="store_true", help="also list each message's signals")
    parser.add_argument("--catalog", nargs="+", action="extend", default=[], metavar="FILE",
                        help="signal catalogs (default: NAME.catalog.yaml next to the DBC, when present)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    loaded = load_dbc(args.dbc)
    catalog = load_catalogs({"*": [loaded]}, args.catalog) if args.signals else None
    messages = sorted(loaded.database.messages, key=lambda m: m.name)
    records = []
    for message in messages:
        record = {"name": message.name, "id": message.frame_id, "extended": bool(message.is_extended_frame)}
        if catalog is not None:
            specs = [spec_for(message, signal, catalog) for signal in message.signals]
            # spec_for falls back to the DBC key when the catalog names no VSS path: say there is none.
            record["signals"] = [{"name": spec.signal, "unit": spec.unit, "category": spec.category,
                                  "vss": spec.vss_path if spec.vss_path != spec.key else ""} for spec in specs]
        records.append(record)
    if args.json:
        json.dump({"dbc": str(args.dbc), "messages": records}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for record in records:
        sys.stdout.write(record["name"] + "\n")
        for signal in record.get("signals", ()):
            unit = f" [{signal['unit']}]" if signal["unit"] else ""
            sys.stdout.write(f"  {signal['name']}{unit}  {signal['category']}  {signal['vss'] or '-'}\n")
    return 0
