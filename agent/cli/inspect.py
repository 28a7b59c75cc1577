"""``vehicle-agent inspect DB_OR_BATCH_FILE``: decode batches back to samples.

The input is either a buffer database (SQLite, opened read-only, so a running
agent is not disturbed) or a file holding one or more batch payloads back to
back.  Output is JSON lines (one header object per batch, then one object per
sample) or CSV (one row per sample, batch identity in the first columns).
Floats are printed with Python's shortest round-trip repr, so the text
reproduces the decoded values bit for bit.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import msgpack

from agent.batch.format import BatchError, dictionary_id
from agent.batch.reading import decode_batch, iter_samples
from agent.buffer.store import BatchStore
from agent.cli.framework import add_command

SQLITE_MAGIC = b"SQLite format 3\x00"
CSV_COLUMNS = ("stream", "boot_id", "seq", "timestamp", "bus", "key", "value", "raw")


def register(subparsers) -> None:
    parser = add_command(subparsers, "inspect", "decode batches (buffer database or batch file) to samples", examples=(
        "vehicle-agent inspect state/buffer.db --format csv -o samples.csv",
        "vehicle-agent inspect batches.msgpack --headers-only",
    ))
    parser.add_argument("path", metavar="DB_OR_BATCH_FILE", help="buffer database or file of batch payloads")
    parser.add_argument("--format", choices=("jsonl", "csv"), default="jsonl", help="output format (default jsonl)")
    parser.add_argument("--dict", action="append", default=[], metavar="FILE",
                        help="zstd dictionary for batches that name one (repeatable; a database brings its own)")
    parser.add_argument("--headers-only", action="store_true", help="print batch headers only (jsonl)")
    parser.add_argument("-o", "--output", metavar="FILE", help="write here instead of standard output")
    parser.set_defaults(func=run)


def _payloads_from_file(path: Path) -> Iterator[tuple[str, bytes]]:
    data = path.read_bytes()
    if not data:
        raise BatchError(f"{path}: empty file, no batches")
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    start = 0
    index = 0
    while start < len(data):
        if not (0x80 <= data[start] <= 0x8F or data[start] in (0xDE, 0xDF)):  # a payload is a msgpack map
            raise BatchError(f"{path}: byte {start}: not a batch payload (a batch file holds msgpack maps"
                             " with 'header' and 'body', or give a buffer database)")
        try:
            unpacker.skip()
        except msgpack.OutOfData:
            raise BatchError(f"{path}: truncated batch at byte {start}") from None
        except Exception as exc:
            raise BatchError(f"{path}: byte {start}: not a batch payload: {type(exc).__name__}: {exc}") from None
        end = unpacker.tell()
        yield f"{path}#{index}", data[start:end]
        start = end
        index += 1


def run(args) -> int:
    path = Path(args.path)
    if not path.is_file():
        raise BatchError(f"{path}: no such file")
    dictionaries: dict[str, bytes] = {}
    for dict_path in args.dict:
        data = Path(dict_path).read_bytes()
        dictionaries[dictionary_id(data)] = data
    with path.open("rb") as handle:
        is_db = handle.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    out: TextIO = open(args.output, "w", encoding="utf-8", newline="") if args.output else sys.stdout
    try:
        if is_db:
            with BatchStore(path, read_only=True) as store:
                dictionaries.update(store.dictionaries())
                batches = [(f"{path}:batch {b.id}", b.payload) for b in store.pending(limit=1 << 62)]
                skipped = store.counters()["pending_batches"] - len(batches)
        else:
            batches = list(_payloads_from_file(path))
            skipped = 0
        failures = _write(batches, dictionaries, args, out)
    finally:
        if out is not sys.stdout:
            out.close()
    if skipped:
        print(f"inspect: {skipped} batch(es) failed the integrity check and were skipped", file=sys.stderr)
    for where, error in failures:
        print(f"inspect: {where}: {error}", file=sys.stderr)
    return 1 if skipped or failures else 0


def _write(batches: list[tuple[str, bytes]], dictionaries: dict[str, bytes], args, out: TextIO) -> list:
    failures = []
    writer = None
    if args.format == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
    for where, payload in batches:
        try:
            decoded = decode_batch(payload, dictionaries)
        except BatchError as exc:
            failures.append((where, exc))
            continue
        header = decoded.header
        if writer is None:
            out.write(json.dumps({"header": header}, separators=(",", ":")) + "\n")
            if args.headers_only:
                continue
            for timestamp, bus, key, value, raw in iter_samples(decoded):
                out.write(json.dumps({"t": timestamp, "bus": bus, "key": key, "value": value, "raw": raw},
                                     separators=(",", ":")) + "\n")
        else:
            ident = (header["stream"], header["boot_id"], header["seq"])
            writer.writerows((*ident, repr(t), bus, key, _text(value), _text(raw))
                             for t, bus, key, value, raw in iter_samples(decoded))
    return failures


def _text(value: int | float | None) -> str:
    return "" if value is None else repr(value)
