"""``vehicle-agent ledger``: what left the car, and a check that the record was not altered.

    vehicle-agent ledger [show] [--since 7d | 2024-06-01 | 2024-06-01T08:00] [--json]
    vehicle-agent ledger verify        exit 0 when intact, 1 when damaged (says where)
    vehicle-agent ledger verify --against anchor.json
                                       also compare with a head kept outside the car: exit 1 when the
                                       ledger was rolled back or rewritten below it
    vehicle-agent ledger reconcile DIR  compare a backend's data-access export (`vehicle-sim cloud export`)
                                       with the ledger by payload SHA-256: exit 0 when the backend holds
                                       every batch that left and nothing else, 1 otherwise, 2 on a bad,
                                       incomplete or altered export

The anchor file is JSON: ``{"seq": N, "line_sha256": "..."}`` as the receiver exports it, or a status
message of the vehicle (its ``health.anchor.ledger_head``).

``ledger reconcile DIR`` reads the directory ``vehicle-sim cloud export`` writes (batches.jsonl, samples.csv,
manifest.json), checks its files against the manifest and lists, by payload SHA-256, the batches that left
the car and the backend holds, those it does not show, and those it shows that never left this car.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from agent.cli.consent import add_state_arguments, state_from_args
from agent.cli.framework import add_command
from agent.export.anchor import signing_key_fingerprint
from agent.ledger import Ledger, LedgerEntry
from agent.ledger_chain import anchor_from_document, compare_anchor, loads_limited
from agent.privacy.wording import describe_change
from agent.reconcile import reconcile_dir, report_lines
from agent.timespec import iso_local, moment_type

MAX_ANCHOR_BYTES = 1 << 20


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "ledger", "what left the car (hash-chained record); `ledger verify`, `ledger "
                         "reconcile`", examples=(
        "vehicle-agent ledger --since 7d --config agent.yaml",
        "vehicle-agent ledger --since yesterday --json --config agent.yaml",
        "vehicle-agent ledger verify --against anchor.json --config agent.yaml",
        "vehicle-agent ledger reconcile access-v3f1c9a --config agent.yaml --json",
    ), description="\n\n".join(__doc__.split("\n\n")[2:]).replace("``", "'"))
    parser.add_argument("action", nargs="?", choices=("show", "verify", "reconcile"), default="show")
    parser.add_argument("export_dir", nargs="?", metavar="DIR", help="reconcile: the backend's export directory")
    add_state_arguments(parser)
    parser.add_argument("--since", metavar="WHEN", type=moment_type("--since"),
                        help="only entries since WHEN: 7d, 12h, 30m (ago), yesterday, 2024-06-01[T08:00], epoch s")
    parser.add_argument("--json", action="store_true", help="one JSON entry per line (reconcile: one document)")
    parser.add_argument("--against", metavar="FILE",
                        help="verify: also compare with this anchor (ledger head kept outside the car)")
    parser.set_defaults(func=run)


def _categories(fields: dict[str, Any]) -> str:
    return ",".join(fields.get("categories") or ()) or "-"


def describe(entry: LedgerEntry) -> str:
    """One line; an entry whose fields are not what its kind promises (an edit) is shown as it is."""
    try:
        return _describe(entry)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError, OSError):
        text = json.dumps(entry.fields, sort_keys=True)
        return f"{entry.kind} (unexpected fields): {text[:200]}{'...' if len(text) > 200 else ''}"


def _describe(entry: LedgerEntry) -> str:
    f = entry.fields
    if entry.kind == "upload":
        span = f"{iso_local(f['first'])} .. {iso_local(f['last'])}" if f.get("first") is not None else "-"
        bench = " BENCH" if f.get("bench") else ""
        return (f"sent {f['signals']} values of {_categories(f)} ({span}), level {f.get('level') or 'exact'}, "
                f"{f['bytes']} bytes, sha256 {str(f['sha256'])[:16]}.. to {f['broker']} "
                f"(batch {f['batch']}, consent v{f['consent_version']}){bench}")
    if entry.kind == "consent_change":
        return describe_change(f["version"], f["change"], f.get("category"), f["source"], f.get("detail") or {})
    if entry.kind == "purge":
        return f"purged {f['batches']} unsent batch(es) of {_categories(f)} ({f['reason']})"
    if entry.kind == "may_have_left":
        return (f"{f['batches']} batch(es) of {_categories(f)} may already have left: {f['reason']} "
                f"(batches {', '.join(map(str, f['batch_ids']))})")
    if entry.kind == "remote_refused":
        return f"refused a network consent command '{f['action']}' ({f['reason']})"
    if entry.kind == "forget_me":
        return (f"forget me: {f['revoked']} categories revoked, {f['zones']} zones and {f['trips']} trips deleted, "
                f"pseudonym key {f['pseudonym_key']} (a new pseudonym from the next start)")
    return f"{entry.kind}: " + ", ".join(f"{k} {v}" for k, v in sorted(f.items()))


def load_anchor(path: str) -> dict[str, Any]:
    """The anchor in FILE (ValueError naming the file when there is none)."""
    with open(path, "rb") as handle:
        data = handle.read(MAX_ANCHOR_BYTES + 1)
    try:
        if len(data) > MAX_ANCHOR_BYTES:
            raise ValueError(f"larger than {MAX_ANCHOR_BYTES} bytes")
        return anchor_from_document(loads_limited(data))
    except ValueError as exc:
        raise ValueError(f"{path}: not an anchor: {exc}") from None


def _against(ledger: Ledger, path: str, state_dir) -> dict[str, Any]:
    anchor = load_anchor(path)
    try:
        data = ledger.path.read_bytes()
    except FileNotFoundError:
        data = b""
    problems = [p for p in [compare_anchor(data, anchor)] if p]
    anchored_key = anchor.get("signing_key")
    try:
        local_key = signing_key_fingerprint(state_dir, create=False) if anchored_key else None
    except (OSError, ValueError):  # an unusable key file: `identity` and `export` say why
        local_key = None
    if anchored_key and local_key and anchored_key.lower() != local_key.lower():
        problems.append(f"the anchor was published with signing key {anchored_key}, this vehicle's key is "
                        f"{local_key} (another vehicle's anchor, or the key was replaced)")
    where = f"anchor {path} (seq {anchor['seq']}, line sha256 {anchor['line_sha256'][:16]}...)"
    report = (f"ledger does not match the {where}: " + "; ".join(problems)) if problems else \
        f"ledger matches the {where}"
    return {"ok": not problems, "seq": anchor["seq"], "line_sha256": anchor["line_sha256"], "problems": problems,
            "report": report}


def run_reconcile(args: argparse.Namespace, state_dir: Path) -> int:
    if args.against or args.since is not None:
        raise ValueError("--against and --since do not go with `ledger reconcile` (it compares every upload)")
    if not args.export_dir:
        raise ValueError("reconcile needs the export directory: vehicle-agent ledger reconcile DIR")
    if not state_dir.is_dir():
        raise ValueError(f"{state_dir}: no such state directory")
    result = reconcile_dir(args.export_dir, state_dir)
    print(json.dumps(result.to_json(), sort_keys=True) if args.json else "\n".join(report_lines(result)))
    return 0 if result.ok else 1


def run(args: argparse.Namespace) -> int:
    state_dir, _ = state_from_args(args)
    if args.action == "reconcile":
        return run_reconcile(args, state_dir)
    if args.export_dir:
        raise ValueError(f"unexpected argument {args.export_dir!r} (a directory goes with `ledger reconcile`)")
    # verify only reads: a torn last line is reported, not repaired (the agent repairs it when it opens the ledger)
    ledger = Ledger.in_dir(state_dir, repair=args.action != "verify")
    if args.action == "verify":
        result = ledger.verify()
        against = _against(ledger, args.against, state_dir) if args.against else None
        if args.json:
            print(json.dumps({**result.__dict__, **({"anchor": against} if against else {})}))
        else:
            print(result)
            if against:
                print(against["report"])
        return 0 if result.ok and (against is None or against["ok"]) else 1
    if args.against:
        raise ValueError("--against goes with `ledger verify`")
    since = args.since
    entries = ledger.entries(since)
    for entry in entries:
        if args.json:
            print(json.dumps(entry.to_json(), sort_keys=True))
        else:
            stamp = iso_local(entry.time)
            print(f"#{entry.seq:<5} {stamp}  {describe(entry)}")
    if not entries and not args.json:
        print("the ledger is empty" + (" for that period" if since is not None else ""))
    return 0
