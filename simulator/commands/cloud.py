"""``vehicle-sim cloud --broker HOST:PORT``: the reference cloud receiver.

Subscribes to every vehicle's batches (optionally as one member of a shared
subscription group, so several receivers split a fleet), verifies, drops
duplicates (same identity, same payload), keeps conflicts aside (same identity,
another payload: the first stays stored), finds gaps, decodes into SQLite (or PostgreSQL:
``--db postgresql://user@host:5432/name``, which several receivers may share)
and prints a report when it stops: after ``--batches N`` unique batches, after
``--duration S`` seconds, or on Ctrl-C.

``vehicle-sim cloud anchor --db FILE --vehicle ID [-o OUT] [--conflicts]`` writes
the ledger anchor the receiver keeps for a vehicle as JSON, the file
``vehicle-agent ledger verify --against OUT`` reads (exit 1 when it has none).

``vehicle-sim cloud export --vehicle ID --out DIR [--db FILE]`` answers the owner's
data-access request (simulator/receiver/access.py): every batch and sample held for
that vehicle, which ``vehicle-agent ledger reconcile DIR`` compares with the car's ledger.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from agent.cli.framework import add_command
from agent.netlocal import is_loopback
from agent.timespec import duration_type
from simulator.receiver import Receiver, ReceiverTls, format_report
from simulator.receiver.access import UnknownVehicle, export_vehicle
from simulator.receiver.migrations import SchemaTooNew
from simulator.receiver.parquet import write_parquet
from simulator.receiver.sql import is_postgres_url, redacted
from simulator.receiver.store import ReceiverStore, open_receiver_store

DB_HELP = "SQLite file or postgresql://USER@HOST:PORT/NAME URL"


class CloudUsageError(ValueError):
    """A bad command line; printed as one line by vehicle-sim."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "cloud", "run the reference cloud receiver (MQTT -> SQLite or PostgreSQL + report)", examples=(
            "vehicle-sim cloud --broker 127.0.0.1:1883 --db fleet.sqlite --duration 10m",
            "vehicle-sim cloud --broker 127.0.0.1:1883 --db postgresql://rx@127.0.0.1:5432/fleet --share fleet",
            "vehicle-sim cloud --broker 127.0.0.1:8883 --ca ca.pem --cert rx.pem --key rx.key --batches 100 --json",
        ),
        description="Subscribe to vehicles/+/v1/data/+ on an MQTT v5 broker, verify and deduplicate batches, "
                    "decode them into SQLite or PostgreSQL and report batches, samples, duplicates, conflicts, "
                    "corrupt batches, gaps, bytes and latency.")
    parser.add_argument("--broker", metavar="HOST:PORT",
                        help="broker address, required to receive (port defaults to 1883, or 8883 with --ca)")
    parser.add_argument("--db", default=":memory:", metavar="DB",
                        help=f"receiver database: {DB_HELP} (default: SQLite in memory); receivers may share one")
    parser.add_argument("--share", metavar="GROUP", default=None,
                        help="join shared subscription GROUP ($share/GROUP/...): receivers split the fleet")
    parser.add_argument("--client-id", default=None, metavar="ID",
                        help="MQTT client id; keep it across restarts to resume the persistent session")
    parser.add_argument("--topic-prefix", default="vehicles", metavar="PREFIX")
    parser.add_argument("--ca", metavar="FILE", help="CA certificate: use TLS and verify the broker")
    parser.add_argument("--cert", metavar="FILE", help="client certificate (mutual TLS)")
    parser.add_argument("--key", metavar="FILE", help="client private key (mutual TLS)")
    parser.add_argument("--dictionary", action="append", default=[], metavar="FILE",
                        help="zstd dictionary file for batches that name one (vehicles also publish theirs)")
    parser.add_argument("--batches", type=int, default=None, metavar="N", help="stop after N unique batches")
    parser.add_argument("--duration", type=duration_type("--duration"), default=None, metavar="TIME",
                        help="stop after this long (90s, 10m, 2h)")
    parser.add_argument("--report", metavar="FILE", help="also write the report as JSON to FILE")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    parser.set_defaults(func=run)
    actions = parser.add_subparsers(dest="cloud_action", metavar="ACTION")
    anchor = add_command(
        actions, "anchor", "write a vehicle's kept ledger anchor as JSON (for `vehicle-agent ledger verify --against`)",
        examples=("vehicle-sim cloud anchor --db fleet.sqlite --vehicle v3f1c9a -o anchor.json",),
        description="Write the latest ledger head the receiver kept for a vehicle (from its online status "
                    "messages; it never goes backwards) as JSON: vehicle, seq, line_sha256, signing_key, "
                    "status_time, received.  Exit 1 when the database has none for that vehicle.")
    anchor.add_argument("--db", required=True, metavar="DB", help=f"the receiver's database: {DB_HELP}")
    anchor.add_argument("--vehicle", required=True, metavar="ID", help="vehicle id (as in its topics)")
    anchor.add_argument("-o", "--output", metavar="FILE", help="write the JSON to FILE (default: standard output)")
    anchor.add_argument("--conflicts", action="store_true",
                        help="add the anchors that would have moved it back or changed its key")
    anchor.set_defaults(func=run_anchor)
    export = add_command(
        actions, "export", "answer an owner's data-access request: every batch and sample held for a vehicle",
        examples=("vehicle-sim cloud export --vehicle v3f1c9a --out access-v3f1c9a --db fleet.sqlite",),
        description="Write into DIR (new or empty) batches.jsonl (one line per stored batch, with the SHA-256 of "
                    "its whole payload as the car's ledger records it), samples.csv (every decoded sample) and "
                    "manifest.json (counts and the SHA-256 of both files).  Nothing of other vehicles is "
                    "written.  Exit 1 when the database holds no batch of that vehicle.  In the car, "
                    "`vehicle-agent ledger reconcile DIR` compares the export with what the ledger says left.")
    export.add_argument("--vehicle", required=True, metavar="PSEUDONYM", help="vehicle id (as in its topics)")
    export.add_argument("--out", required=True, metavar="DIR", help="directory to write (new or empty)")
    export.add_argument("--db", default="receiver.sqlite", metavar="DB",
                        help=f"the receiver's database: {DB_HELP} (default: receiver.sqlite)")
    export.set_defaults(func=run_export)
    parquet = add_command(
        actions, "parquet", "write the decoded samples as Parquet, partitioned by vehicle and day",
        examples=("vehicle-sim cloud parquet --db postgresql://fleet@127.0.0.1:5432/fleet --out lake/",
                  "vehicle-sim cloud parquet --db fleet.sqlite --out lake/ --vehicle v3f1c9a"),
        description="Hive-style partitions OUT/vehicle=<pseudonym>/day=<YYYY-MM-DD>/part-0.parquet (zstd), for "
                    "DuckDB, Spark or Athena.  OUT must be new or empty; a failed export leaves nothing half.")
    parquet.add_argument("--db", required=True, metavar="DB", help=f"the receiver's database: {DB_HELP}")
    parquet.add_argument("--out", required=True, metavar="DIR", help="directory to write (new or empty)")
    parquet.add_argument("--vehicle", action="append", default=None, metavar="PSEUDONYM",
                         help="only this vehicle (repeatable; default: every vehicle)")
    parquet.set_defaults(func=run_parquet)


def _one_line(exc: Exception) -> str:
    """A database error (it names the database, a URL without its password) as one line."""
    return " ".join(str(exc).split())


def _existing_db(db: str) -> str:
    """``--db`` of an action that reads a receiver database: a URL, or a SQLite file that exists."""
    if not is_postgres_url(db) and not Path(db).is_file():
        raise CloudUsageError(f"--db {db}: no such file")
    return db


def run_export(args: argparse.Namespace) -> int:
    try:
        summary = export_vehicle(_existing_db(args.db), args.vehicle, args.out)
    except (SchemaTooNew, RuntimeError) as exc:
        raise CloudUsageError(f"--db: {_one_line(exc)}") from None
    except UnknownVehicle as exc:
        print(f"vehicle-sim cloud export: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {summary.batches} batches and {summary.samples} samples of vehicle {summary.vehicle} to "
          f"{summary.out_dir} (batches.jsonl sha256 {summary.batches_sha256[:16]}..., "
          f"samples.csv sha256 {summary.samples_sha256[:16]}..., both in {summary.manifest.name})")
    return 0


def run_parquet(args: argparse.Namespace) -> int:
    store = _open(_existing_db(args.db))
    try:
        summary = write_parquet(store, args.out, args.vehicle)
    except ValueError as exc:
        raise CloudUsageError(str(exc)) from None
    finally:
        store.close()
    print(f"wrote {summary.samples} samples of {summary.vehicles} vehicles into {len(summary.files)} Parquet files "
          f"under {summary.out_dir}")
    return 0


def _open(db: str) -> ReceiverStore:
    try:
        return open_receiver_store(db)
    except (SchemaTooNew, RuntimeError) as exc:
        raise CloudUsageError(f"--db: {_one_line(exc)}") from None


def run_anchor(args: argparse.Namespace) -> int:
    store = _open(_existing_db(args.db))
    try:
        anchor = store.ledger_anchor(args.vehicle)
        conflicts = store.ledger_anchor_conflicts(args.vehicle) if args.conflicts else None
    finally:
        store.close()
    if anchor is None:
        print(f"vehicle-sim cloud anchor: no ledger anchor for vehicle {args.vehicle!r} in {redacted(args.db)} "
              "(its online status messages carried none, or it never came)", file=sys.stderr)
        return 1
    document = {**anchor, **({"conflicts": conflicts} if conflicts is not None else {})}
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def parse_broker(text: str, tls: bool) -> tuple[str, int]:
    default_port = 8883 if tls else 1883
    text = text.strip()
    if text.startswith("["):  # [::1]:1883
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not host:
        raise CloudUsageError(f"--broker {text!r}: no host")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise CloudUsageError(f"--broker {text!r}: port must be a number") from None
    if not 0 < port < 65536:
        raise CloudUsageError(f"--broker {text!r}: port out of range")
    return host, port


def _tls(args: argparse.Namespace) -> ReceiverTls | None:
    if (args.cert is None) != (args.key is None):
        raise CloudUsageError("--cert and --key go together")
    if args.ca is None:
        if args.cert:
            raise CloudUsageError("--cert/--key need --ca")
        return None
    for option, path in (("--ca", args.ca), ("--cert", args.cert), ("--key", args.key)):
        if path is not None and not Path(path).is_file():
            raise CloudUsageError(f"{option} {path}: no such file")
    return ReceiverTls(args.ca, args.cert, args.key)


def _dictionaries(paths: list[str]) -> dict[str, bytes]:
    out = {}
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise CloudUsageError(f"--dictionary {path}: {exc.strerror or exc}") from None
        out[f"sha256:{hashlib.sha256(data).hexdigest()}"] = data
    return out


def run(args: argparse.Namespace) -> int:
    if args.broker is None:
        raise CloudUsageError("--broker HOST:PORT is required (or use `vehicle-sim cloud anchor`)")
    tls = _tls(args)
    host, port = parse_broker(args.broker, tls is not None)
    if tls is None and not is_loopback(host):
        raise CloudUsageError(f"--broker {host}: plaintext MQTT only to a loopback broker; give --ca for TLS")
    if args.batches is not None and args.batches < 1:
        raise CloudUsageError("--batches must be at least 1")
    try:
        receiver = Receiver(host, port, args.db, tls=tls, shared_group=args.share, topic_prefix=args.topic_prefix,
                            client_id=args.client_id, dictionaries=_dictionaries(args.dictionary))
    except (SchemaTooNew, RuntimeError) as exc:
        raise CloudUsageError(f"--db: {_one_line(exc)}") from None
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) \
        if threading.current_thread() is threading.main_thread() else None
    reached = True
    try:
        try:
            receiver.start()
        except (OSError, TimeoutError) as exc:
            raise CloudUsageError(f"cannot subscribe on {host}:{port}: {exc}") from None
        print(f"vehicle-sim cloud: subscribed on {host}:{port}"
              + (f" as member of shared group {args.share}" if args.share else ""), file=sys.stderr)
        reached = _wait(receiver, stop, args.batches, args.duration)
        report = receiver.report()
    except KeyboardInterrupt:
        report = receiver.report()
    finally:
        receiver.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    _output(report, args)
    return 0 if reached else 1


def _wait(receiver: Receiver, stop: threading.Event, batches: int | None, duration: float | None) -> bool:
    """True when the stop condition was met (False: --duration ran out before --batches)."""
    deadline = None if duration is None else time.monotonic() + duration
    while not stop.is_set():
        if batches is not None and receiver.unique_batches >= batches:
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return batches is None
        receiver.wait_for(batches or 1 << 62, timeout=0.2)
    return True


def _output(report: dict[str, Any], args: argparse.Namespace) -> None:
    text = json.dumps(report, indent=2, sort_keys=True)
    if args.report:
        Path(args.report).write_text(text + "\n", encoding="utf-8")
    print(text if args.json else format_report(report))
    if report.get("conflicts"):
        print(f"vehicle-sim cloud: {report['conflicts']} payloads came under the identity of a stored batch with "
              f"other content; kept aside in the conflicts table of {redacted(args.db)}", file=sys.stderr)
