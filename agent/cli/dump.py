"""``vehicle-agent dump DBC``: every message and signal of a DBC, as ``cantools dump`` shows them, with the
catalog's privacy category and VSS path beside each signal (``NAME.catalog.yaml`` next to the DBC, or
``--catalog``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from cantools.database import Message, Signal

from agent.catalog import load_catalogs
from agent.cli.framework import add_command
from agent.dbc import load_dbc
from agent.decode import spec_for
from agent.model import UNCLASSIFIED, SignalSpec

SIGNAL_COLUMNS = ("signal", "start", "len", "order", "type", "scale", "offset", "min", "max", "unit", "mux",
                  "category", "vss")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "dump", "show a DBC's messages and signals with their catalog entries", examples=(
        "vehicle-agent dump dbc/kona-ev/pcan.dbc",
        "vehicle-agent dump dbc/css-electronics/canmod-gps.dbc --json | jq '.messages[].name'",
    ), description="Like `cantools dump`: per message its id, length, senders and cycle time; per signal its "
                   "start bit, length, byte order, scale, offset, range, unit and choices, and beside it the "
                   "privacy category and VSS path of the signal catalog (NAME.catalog.yaml next to the DBC, "
                   "or --catalog). A signal without a catalog entry is 'unclassified' and never uploaded.")
    parser.add_argument("dbc", metavar="DBC", help="DBC file")
    parser.add_argument("--catalog", nargs="+", action="extend", default=[], metavar="FILE",
                        help="signal catalogs (default: NAME.catalog.yaml next to the DBC, when present)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def signal_record(message: Message, signal: Signal, spec: SignalSpec) -> dict[str, Any]:
    return {
        "name": signal.name, "start": signal.start, "length": signal.length, "byte_order": signal.byte_order,
        "signed": bool(signal.is_signed), "float": bool(signal.is_float), "scale": signal.scale,
        "offset": signal.offset, "minimum": signal.minimum, "maximum": signal.maximum, "unit": signal.unit or "",
        "choices": {str(int(k)): str(v) for k, v in (signal.choices or {}).items()},
        "is_multiplexer": bool(signal.is_multiplexer), "multiplexer_ids": list(signal.multiplexer_ids or []),
        "comment": signal.comment or "", "category": spec.category,
        # spec_for falls back to the DBC key when the catalog names no path: say there is none.
        "vss": spec.vss_path if spec.vss_path != spec.key else "",
    }


def message_record(message: Message, specs: dict[str, SignalSpec]) -> dict[str, Any]:
    return {
        "name": message.name, "id": message.frame_id, "id_hex": f"0x{message.frame_id:x}",
        "extended": bool(message.is_extended_frame), "length": message.length, "senders": list(message.senders),
        "cycle_time_ms": message.cycle_time, "comment": message.comment or "",
        "signals": [signal_record(message, s, specs[f"{message.name}.{s.name}"]) for s in message.signals],
    }


def _number(value: float | int | None) -> str:
    return "-" if value is None else f"{value:.12g}"


def _row(signal: dict[str, Any]) -> tuple[str, ...]:
    kind = "float" if signal["float"] else "signed" if signal["signed"] else "unsigned"
    mux = "M" if signal["is_multiplexer"] else (
        "m" + ",".join(map(str, signal["multiplexer_ids"])) if signal["multiplexer_ids"] else "")
    order = "big" if signal["byte_order"] == "big_endian" else "little"
    return (signal["name"], str(signal["start"]), str(signal["length"]), order, kind, _number(signal["scale"]),
            _number(signal["offset"]), _number(signal["minimum"]), _number(signal["maximum"]),
            signal["unit"] or "-", mux or "-", signal["category"], signal["vss"] or "-")


def write_text(records: list[dict[str, Any]], out: TextIO) -> None:
    for record in records:
        out.write(f"{record['name']}  id {record['id_hex']}{' (extended)' if record['extended'] else ''}, "
                  f"{record['length']} bytes, senders {', '.join(record['senders']) or '-'}, cycle time "
                  f"{str(record['cycle_time_ms']) + ' ms' if record['cycle_time_ms'] else '-'}\n")
        rows = [SIGNAL_COLUMNS, *(_row(s) for s in record["signals"])]
        widths = [max(len(row[i]) for row in rows) for i in range(len(SIGNAL_COLUMNS))]
        for row, signal in zip(rows, [None, *record["signals"]]):
            out.write("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() + "\n")
            if signal and signal["choices"]:
                out.write("      choices: " + ", ".join(f"{k}={v}" for k, v in signal["choices"].items()) + "\n")
        out.write("\n")


def run(args: argparse.Namespace) -> int:
    loaded = load_dbc(args.dbc)
    catalog = load_catalogs({"*": [loaded]}, args.catalog)
    messages = sorted(loaded.database.messages, key=lambda m: (m.frame_id, m.name))
    specs = {f"{m.name}.{s.name}": spec_for(m, s, catalog) for m in messages for s in m.signals}
    records = [message_record(m, specs) for m in messages]
    if args.json:
        json.dump({"dbc": str(args.dbc), "catalog": catalog.source, "messages": records}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    signals = sum(len(r["signals"]) for r in records)
    classified = sum(1 for r in records for s in r["signals"] if s["category"] != UNCLASSIFIED)
    sys.stdout.write(f"{args.dbc}: {len(records)} messages, {signals} signals ({classified} classified by "
                     f"catalog {catalog.source.removeprefix('<none>+')})\n\n")
    write_text(records, sys.stdout)
    return 0
