"""``vehicle-agent export``: the owner's signed copy of what the car recorded.

    vehicle-agent export --incident ID --out DIR --config agent.yaml
    vehicle-agent export --from T1 --to T2 --out DIR --config agent.yaml [--log drive.log ...]
    vehicle-agent export verify DIR [--key vehicle-public-key.pem]

Times are epoch seconds or ISO 8601 (``2024-05-01T08:00:00+08:00``; without an
offset, the machine's local time).  A range export takes its raw frames from
the logs given with ``--log`` or, without them, from the incident snapshots
that overlap the range (the only raw frames the car keeps).  Every export is
signed with the vehicle's Ed25519 key and recorded in the ledger.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from datetime import datetime
from pathlib import Path

from agent.cli.common import bus_map_from_config, decoder_from_config
from agent.config import AgentConfig, load_config
from agent.export.signing import load_or_create_key, load_public_pem
from agent.export.verify import verify_export
from agent.export.writer import MANIFEST, ExportResult, export_incident, export_range
from agent.incident.config import incident_config
from agent.incident.store import IncidentStore
from agent.ledger import Ledger
from agent.privacy.store import ConsentStore
from agent.sources.log import LogSource


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="write a signed export of an incident or a time range",
                                   description=__doc__.split("\n\n")[1] if __doc__ else None,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE", help="agent configuration (state dir, DBCs, vehicle id)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--incident", metavar="ID", help="an incident snapshot (see `vehicle-agent incidents`)")
    what.add_argument("--from", dest="start", metavar="T1", help="start of the range (epoch s or ISO 8601)")
    parser.add_argument("--to", dest="end", metavar="T2", help="end of the range")
    parser.add_argument("--out", metavar="DIR", help="new (or empty) directory to write")
    parser.add_argument("--log", nargs="+", action="extend", default=[], metavar="FILE",
                        help="range export: recorded logs holding the frames (default: incident snapshots)")
    actions = parser.add_subparsers(dest="export_action", metavar="ACTION")
    verify = actions.add_parser("verify", help="check an export's signature and every file")
    verify.add_argument("directory", metavar="DIR")
    verify.add_argument("--key", metavar="PEM", help="the vehicle's public key to trust (default: the one inside)")
    parser.set_defaults(func=run)


def parse_time(text: str, option: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{option}: expected epoch seconds or ISO 8601 time, got {text!r}") from None
    return moment.timestamp()  # naive: local time


def run(args: argparse.Namespace) -> int:
    if args.export_action == "verify":
        return _verify(args)
    if not args.config:
        raise ValueError("--config FILE is needed (it names the state directory and the DBC files)")
    if not args.out:
        raise ValueError("--out DIR is needed")
    config = load_config(args.config)
    if args.incident:
        if args.end:
            raise ValueError("--to goes with --from, not with --incident")
        result = _export_incident(config, args)
    elif args.start and args.end:
        result = _export_range(config, args)
    else:
        raise ValueError("say what to export: --incident ID, or --from T1 --to T2")
    manifest_sha256 = hashlib.sha256((result.out_dir / MANIFEST).read_bytes()).hexdigest()
    Ledger.in_dir(config.resolve(config.state.dir)).record_export(
        export=args.incident or "range", files=len(result.files), samples=result.samples, frames=result.frames,
        manifest_sha256=manifest_sha256, key_fingerprint=result.fingerprint)
    print(f"exported {result.samples} samples and {result.frames} raw frames to {result.out_dir} "
          f"({len(result.files)} files, signed by key {result.fingerprint[:16]}...)")
    return 0


def _dbc_paths(config: AgentConfig) -> list[Path]:
    paths: list[Path] = []
    for bus in config.buses:
        for dbc in bus.dbc:
            path = config.resolve(dbc).resolve()
            if path not in paths:
                paths.append(path)
    return paths


def _history(state_dir: Path) -> list[dict]:
    return [change.to_json() for change in ConsentStore.in_dir(state_dir).history()]


def _store(config: AgentConfig) -> IncidentStore:
    return IncidentStore.from_config(config.resolve(config.state.dir), incident_config(config), create=False)


def _export_incident(config: AgentConfig, args: argparse.Namespace) -> ExportResult:
    state_dir = config.resolve(config.state.dir)
    store = _store(config)
    info = store.info(args.incident)
    ledger = Ledger.in_dir(state_dir)
    entries = [entry.to_json() for entry in ledger.entries(since=info.start)]
    return export_incident(store, args.incident, args.out, load_or_create_key(state_dir), _dbc_paths(config),
                           _history(state_dir), entries, config.vehicle.id, ledger.head())


def _export_range(config: AgentConfig, args: argparse.Namespace) -> ExportResult:
    start, end = parse_time(args.start, "--from"), parse_time(args.end, "--to")
    state_dir = config.resolve(config.state.dir)
    if args.log:
        bus_map = bus_map_from_config(config)
        frames = [item for path in args.log for item in LogSource(path, bus_map=bus_map)]
    else:
        store = _store(config)
        seen = set()
        frames = []
        for info in store.list():
            if info.end < start or info.start > end:
                continue
            for bus, msg in store.load(info.id).raw_frames():
                key = (bus, msg.timestamp, msg.arbitration_id, bytes(msg.data))
                if key not in seen:  # overlapping snapshots share frames
                    seen.add(key)
                    frames.append((bus, msg))
    ledger = Ledger.in_dir(state_dir)
    entries = [entry.to_json() for entry in ledger.entries(since=start) if entry.time <= end]
    return export_range(frames, decoder_from_config(config), start, end, args.out, load_or_create_key(state_dir),
                        _dbc_paths(config), _history(state_dir), entries, config.vehicle.id,
                        ledger_head=ledger.head())


def _verify(args: argparse.Namespace) -> int:
    trusted = None
    if args.key:
        trusted = load_public_pem(Path(args.key).read_bytes(), args.key)
    result = verify_export(args.directory, trusted)
    print(result.summary(), file=sys.stdout if result.ok else sys.stderr)
    for problem in result.problems:
        print(f"  changed: {problem}", file=sys.stderr)
    return 0 if result.ok else 1
