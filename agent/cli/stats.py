"""``vehicle-agent stats``: per-message counts, decode coverage and the decoder's counters."""

from __future__ import annotations

import argparse
import json
import sys

from agent.cli.common import add_dbc_arguments, decoder_from_args, log_source_from_args
from agent.cli.framework import add_command
from agent.cli.logread import add_log_arguments, frames, nothing_matched, report_reading, say_hints
from agent.decode import Decoder
from agent.flow.parts import integrity_checker
from agent.transport_decode import transport_snapshot


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "stats", "per-message counts and decode coverage of a log", examples=(
        "vehicle-agent stats drive.asc --dbc 0=truck.dbc 1=gps.dbc --bus-map 0=truck,1=gps",
        "vehicle-agent stats kona.log --dbc dbc/kona-ev/comp_can.dbc --json",
        "candump -L can0 | vehicle-agent stats - --dbc vehicle.dbc",
    ), description="Damaged lines are skipped and counted (file:line named) unless --strict.")
    add_log_arguments(parser)
    add_dbc_arguments(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def coverage(decoder: Decoder) -> dict[str, dict]:
    report: dict[str, dict] = {}
    for bus, counters in sorted(decoder.counters.items()):
        counts = counters.as_dict()
        frames = counts["frames"] or 1
        messages = {name: n for (b, name), n in sorted(decoder.message_counts.items()) if b == bus}
        report[bus] = {"counters": counts, "coverage": round(counts["decoded"] / frames, 4), "messages": messages}
    return report


def run(args: argparse.Namespace) -> int:
    decoder = decoder_from_args(args)
    source = log_source_from_args(args)
    decode = decoder.decode
    checker = integrity_checker(decoder)  # counters and checksums of the catalogs' transport signals
    check = checker.on_raw if checker is not None else None
    for bus, msg in frames(source, f"stats {args.log}"):
        if check is not None:
            check(bus, msg)
        decode(msg, bus)
    report = coverage(decoder)
    transport = transport_snapshot(decoder)
    integrity = checker.snapshot() if checker is not None else {}
    report_reading("stats", source)
    warning = source.stats.warning  # read to its end without a frame: there are no statistics to give
    if warning:
        print(f"vehicle-agent stats: error: {warning}", file=sys.stderr)
    hints = [] if warning else nothing_matched(args, source, decoder)
    decoded = sum(info["counters"]["decoded"] for info in report.values())
    decoded += sum(counts["decoded"] for counts in transport.values())  # messages reassembled from ISO-TP
    if args.json:
        reading = {"damaged_lines": source.stats.damaged, "damaged_at": source.stats.damaged_at,
                   **({"read_error": source.stats.error} if source.stats.error else {})}
        print(json.dumps({"log": str(args.log), "buses": report, "reading": reading, "hints": hints,
                          "transport": transport, "integrity": integrity,
                          **({"error": warning} if warning else {})}, indent=2))
        return 1 if warning else say_hints("stats", hints, nothing_decoded=decoded == 0)
    if warning:
        return 1
    for bus, info in report.items():
        counts = info["counters"]
        print(f"bus {bus}: {counts['frames']} frames, {info['coverage']:.1%} decoded")
        print("  " + ", ".join(f"{k} {v}" for k, v in counts.items() if k != "frames"))
        width = max((len(n) for n in info["messages"]), default=0)
        for name, n in sorted(info["messages"].items(), key=lambda kv: -kv[1]):
            print(f"  {name:<{width}}  {n:>8}")
    for bus, counts in transport.items():
        print(f"bus {bus} ISO-TP: {counts['transfers']} transfers, {counts['decoded']} decoded, "
              f"{counts['negative']} negative answers, {counts['decode_errors']} not decodable")
    for bus, messages in integrity.items():
        sums = {key: sum(c[key] for c in messages.values()) for key in
                ("checked", "counter_jumps", "checksum_ok", "checksum_failures", "checksum_not_checked")}
        print(f"bus {bus} transport signals: {sums['checked']} frames checked, {sums['counter_jumps']} counter "
              f"jumps, {sums['checksum_failures']} checksum failures ({sums['checksum_ok']} ok, "
              f"{sums['checksum_not_checked']} not checked)")
    return say_hints("stats", hints, nothing_decoded=decoded == 0)
