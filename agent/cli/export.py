"""``vehicle-agent export``: the owner's signed copy of what the car recorded.

    vehicle-agent export --incident ID --out DIR --config agent.yaml
    vehicle-agent export --from T1 --to T2 --out DIR --config agent.yaml [--log drive.log ...]
                         [--category CAT ...] [--signals GLOB ...]
    vehicle-agent export verify DIR [--fingerprint SHA256:... | --key vehicle.pem | --trust-file FILE]
    vehicle-agent export trust SHA256:... [--name LABEL] [--trust-file FILE]

Times are what every command takes (``agent.timespec``): ``7d`` (ago),
``yesterday``, ISO 8601 (``2024-05-01T08:00:00+08:00``; without an offset,
local time) or epoch seconds.  A range export takes its raw frames from the
logs given with ``--log`` or, without them, from the incident snapshots that
overlap the range (the only raw frames the car keeps).  Every export is
signed with the vehicle's Ed25519 key and recorded in the ledger.

``export verify`` exits 0 when the export is intact and signed by a key you
trust, 1 when a file, the manifest or the signature is wrong (each named with
its reason), 3 when it is intact but signed by a key you did not vouch for.
Trusted keys: ``--fingerprint``/``--key`` when given, else the trust file
(``~/.config/vehicle-agent/trusted-keys``; ``export trust`` adds to it).  The
vehicle's fingerprint comes from ``vehicle-agent identity`` on the vehicle.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from agent.cli.common import bus_map_from_config, decoder_from_config, glob_filter
from agent.cli.framework import add_command
from agent.cli.progress import Progress, progress
from agent.config import AgentConfig, load_config
from agent.export.service import consent_history, dbc_paths, export_one_incident, incident_store, record_export
from agent.export.signing import (
    display_fingerprint,
    fingerprint,
    load_or_create_key,
    load_public_pem,
    parse_fingerprint,
)
from agent.export.trust import add_trusted, default_trust_file, read_trust_file
from agent.export.verify import EXIT_OK, verify_export
from agent.export.writer import (
    ExportResult,
    NothingToExport,
    export_range,
    outside_span,
)
from agent.ledger import Ledger
from agent.model import ALL_CATEGORIES
from agent.sources.log import LogSource
from agent.timespec import iso_local, moment_type


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "export", "write a signed export of an incident or a time range", examples=(
        "vehicle-agent export --incident 20240601T080000-hard-brake --out ~/incident --config agent.yaml",
        "vehicle-agent export --from 7d --to now --out ~/last-week --config agent.yaml --log drive.log",
        "vehicle-agent export --from yesterday --to today --out ~/trip --config agent.yaml --log drive.log "
        "--signals 'Vehicle.Speed' 'EEC1.*'",
        "vehicle-agent export verify ~/incident --fingerprint SHA256:3f1c...",
    ), description="\n\n".join(__doc__.split("\n\n")[2:4]).replace("``", "'"))
    parser.add_argument("--config", metavar="FILE", help="agent configuration (state dir, DBCs, vehicle id)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--incident", metavar="ID", help="an incident snapshot (see `vehicle-agent incidents`)")
    what.add_argument("--from", dest="start", metavar="T1", type=moment_type("--from"),
                      help="start of the range: 7d (ago), yesterday, 2024-06-01T08:00, epoch seconds ...")
    parser.add_argument("--to", dest="end", metavar="T2", type=moment_type("--to"), help="end of the range (now ...)")
    parser.add_argument("--out", metavar="DIR", help="new (or empty) directory to write")
    parser.add_argument("--log", nargs="+", action="extend", default=[], metavar="FILE",
                        help="range export: recorded logs holding the frames (default: incident snapshots)")
    parser.add_argument("--category", nargs="+", action="extend", default=[], choices=ALL_CATEGORIES,
                        metavar="CAT", help="range export: only samples of these categories (raw frames go in whole)")
    parser.add_argument("--signals", nargs="+", action="extend", default=[], metavar="GLOB",
                        help="range export: only signals whose Message.Signal or VSS path matches")
    actions = parser.add_subparsers(dest="export_action", metavar="ACTION")
    verify = add_command(actions, "verify", "check an export's signature, every file, and whose key signed it",
                         examples=("vehicle-agent export verify ~/incident --key vehicle-public-key.pem",
                                   "vehicle-agent export verify ~/incident   # keys from the trust file"))
    verify.add_argument("directory", metavar="DIR")
    verify.add_argument("--key", metavar="PEM", help="the vehicle's public key (PEM) to trust")
    verify.add_argument("--fingerprint", action="append", default=[], metavar="SHA256:HEX",
                        help="a trusted signing-key fingerprint, as `vehicle-agent identity` prints it (repeatable)")
    verify.add_argument("--trust-file", metavar="FILE", help=f"trusted fingerprints (default {default_trust_file()})")
    trust = add_command(actions, "trust", "add a vehicle's signing-key fingerprint to your trust file",
                        examples=("vehicle-agent export trust SHA256:3f1c... --name 'my car'",))
    trust.add_argument("fingerprint", metavar="SHA256:HEX")
    trust.add_argument("--name", default="", help="a label, e.g. the vehicle's plate")
    trust.add_argument("--trust-file", metavar="FILE", help=f"default {default_trust_file()}")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.export_action == "verify":
        return _verify(args)
    if args.export_action == "trust":
        path = Path(args.trust_file) if args.trust_file else default_trust_file()
        added = add_trusted(path, args.fingerprint, args.name)
        shown = display_fingerprint(parse_fingerprint(args.fingerprint))
        print(f"{shown} {'added to' if added else 'is already in'} {path}")
        return 0
    if not args.config:
        raise ValueError("--config FILE is needed (it names the state directory and the DBC files)")
    if not args.out:
        raise ValueError("--out DIR is needed")
    config = load_config(args.config)
    if args.incident:
        for option, given in (("--to", args.end), ("--log", args.log), ("--category", args.category),
                              ("--signals", args.signals)):
            if given not in (None, []):
                raise ValueError(f"{option} goes with --from, not with --incident")
        result = export_one_incident(config, args.incident, args.out)
    elif args.start is not None and args.end is not None:
        try:
            result = _export_range(config, args)
        except NothingToExport as empty:  # not a configuration error: the range is simply empty
            print(f"vehicle-agent export: {empty}", file=sys.stderr)
            return 1
    else:
        raise ValueError("say what to export: --incident ID, or --from T1 --to T2")
    if not args.incident:
        record_export(config.resolve(config.state.dir), "range", result)
    span = f" from {iso_local(args.start)} to {iso_local(args.end)}" if args.start is not None else ""
    print(f"exported {result.samples} samples and {result.frames} raw frames{span} to {result.out_dir} "
          f"({len(result.files)} files, signed by key {result.fingerprint[:16]}...)")
    return 0


def _export_range(config: AgentConfig, args: argparse.Namespace) -> ExportResult:
    start, end = args.start, args.end
    state_dir = config.resolve(config.state.dir)
    if args.log:
        bus_map = bus_map_from_config(config)
        frames = []
        for path in args.log:
            with progress(f"read {Path(path).name}") as bar:
                frames += _counted(LogSource(path, bus_map=bus_map), bar)
    else:
        store = incident_store(config)
        seen = set()
        frames = []
        infos = store.list()
        overlapping = [info for info in infos if not (info.end < start or info.start > end)]
        if infos and not overlapping:
            first, last = min(info.start for info in infos), max(info.end for info in infos)
            reason = outside_span(start, end, first, last, f"{len(infos)} incident snapshots")
            raise NothingToExport(f"{reason} (the car keeps raw frames only around incidents; give recorded logs "
                                  "with --log FILE)")
        for info in overlapping:
            for bus, msg in store.load(info.id).raw_frames():
                key = (bus, msg.timestamp, msg.arbitration_id, bytes(msg.data))
                if key not in seen:  # overlapping snapshots share frames
                    seen.add(key)
                    frames.append((bus, msg))
    ledger = Ledger.in_dir(state_dir)
    entries = [entry.to_json() for entry in ledger.entries(since=start) if entry.time <= end]
    with progress(f"export {iso_local(start)} .. {iso_local(end)}", total=len(frames)) as bar:
        return export_range(_counted(frames, bar), decoder_from_config(config), start, end, args.out,
                            load_or_create_key(state_dir), dbc_paths(config), consent_history(state_dir), entries,
                            config.vehicle.id, categories=args.category or None, ledger_head=ledger.head(),
                            signals=glob_filter(args.signals), signals_asked=" ".join(args.signals))


def _counted(frames: Iterable, bar: Progress) -> Iterator:
    for item in frames:
        bar.advance()
        yield item


def _trusted(args: argparse.Namespace) -> dict[str, str]:
    """Fingerprint -> label: the ones given on the command line, else the trust file's."""
    given = {parse_fingerprint(text): "given with --fingerprint" for text in args.fingerprint}
    if args.key:
        with open(args.key, "rb") as handle:
            given[fingerprint(load_public_pem(handle.read(1 << 16), args.key))] = f"key {args.key}"
    if given:
        return given
    path = Path(args.trust_file) if args.trust_file else default_trust_file()
    return {digest: label or f"in {path}" for digest, label in read_trust_file(path).items()}


def _verify(args: argparse.Namespace) -> int:
    result = verify_export(args.directory, trusted=_trusted(args))
    code = result.exit_code
    print(result.summary(), file=sys.stdout if code == EXIT_OK else sys.stderr)
    for problem in result.problems:
        print(f"  changed: {problem}", file=sys.stderr)
    return code
