"""``vehicle-agent catalog``: draft and check signal catalogs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.catalog import catalog_path_for, draft_catalog, load_catalog
from agent.cli.framework import add_command
from agent.dbc import load_dbc
from agent.integrity.infer import infer_roles
from agent.sources.log import LogSource


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "catalog", "draft or check a signal catalog (DBC -> VSS, unit, category)",
                         examples=("vehicle-agent catalog init dbc/kona-ev/pcan.dbc -o -",
                                   "vehicle-agent catalog check pcan.catalog.yaml --dbc dbc/kona-ev/pcan.dbc"))
    actions = parser.add_subparsers(dest="catalog_command", metavar="ACTION")
    actions.required = True
    init = add_command(actions, "init", "draft a catalog from a DBC (categories guessed, marked for review)",
                       examples=("vehicle-agent catalog init vehicle.dbc",
                                 "vehicle-agent catalog init vehicle.dbc -o -"))
    init.add_argument("dbc", metavar="DBC")
    init.add_argument("-o", "--output", default=None,
                      help="where to write (default: NAME.catalog.yaml next to the DBC; '-' for stdout)")
    init.add_argument("--force", action="store_true", help="overwrite an existing catalog")
    init.add_argument("--log", default=None, metavar="LOG",
                      help="a CAN log of this DBC's bus: rolling counters and checksums are proposed from how "
                           "their values behave (else from their names only)")
    init.set_defaults(func=run_init)
    check = add_command(actions, "check", "validate a catalog against its DBC",
                        examples=("vehicle-agent catalog check vehicle.catalog.yaml --dbc vehicle.dbc",))
    check.add_argument("catalog", metavar="CATALOG")
    check.add_argument("--dbc", required=True)
    check.set_defaults(func=run_check)


def run_init(args: argparse.Namespace) -> int:
    loaded = load_dbc(args.dbc)
    frames = LogSource(args.log) if args.log else ()
    roles = infer_roles(loaded.database, frames)
    text = draft_catalog(loaded.database, Path(args.dbc).name, roles)
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    out = Path(args.output) if args.output else catalog_path_for(args.dbc)
    if out.exists() and not args.force:
        raise ValueError(f"{out}: exists; use --force to overwrite")
    out.write_text(text, encoding="utf-8")
    signals = sum(len(m.signals) for m in loaded.database.messages)
    transport = sum(1 for proposal in roles.values() if proposal.role != "data")
    print(f"wrote {out}: {signals} signals drafted, all marked review: true; {transport} proposed as transport "
          f"signals (counters, checksums){' from the log' if args.log else ' by name'}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    catalog = load_catalog(args.catalog)
    loaded = load_dbc(args.dbc)
    known = {f"{m.name}.{s.name}" for m in loaded.database.messages for s in m.signals}
    stale = sorted(set(catalog.entries) - known)
    missing = sorted(known - set(catalog.entries))
    review = sorted(k for k, e in catalog.entries.items() if e.review)
    print(f"{args.catalog}: {len(catalog.entries)} entries; {len(missing)} DBC signals without entry "
          f"(unclassified); {len(review)} marked for review")
    for key in stale:
        print(f"  not in DBC: {key}")
    return 1 if stale else 0
