"""``vehicle-agent decode``: a log (or candump text on standard input) to decoded samples.

Three forms: ``csv`` (long: one line per sample, value and label), ``jsonl``
(the same as JSON lines) and ``wide-csv`` (one line per decoded frame, one
column per signal, as ``cantools decode --single-line`` or an asammdf export
lays them out; a signal's cell is empty on the lines of other messages, and
choices are given as their numbers: the long form carries the labels).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from contextlib import nullcontext
from typing import TextIO

from agent.cli.common import add_dbc_arguments, decoder_from_args, glob_filter, log_source_from_args
from agent.cli.framework import add_command
from agent.cli.logread import add_log_arguments, frames, nothing_matched, report_reading, say_hints
from agent.decode import Decoder
from agent.model import DecodedFrame

FIELDS = ("timestamp", "bus", "signal", "value", "unit", "label")
WIDE_FIELDS = ("timestamp", "bus", "message")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "decode", "decode a CAN log with DBC files into samples", examples=(
        "vehicle-agent decode drive.blf --dbc vehicle.dbc --signals 'EEC1.*' -o samples.csv",
        "vehicle-agent decode kona.log --dbc dbc/kona-ev/comp_can.dbc --format jsonl",
        "candump -L can0 | vehicle-agent decode - --dbc vehicle.dbc --format wide-csv",
    ), description="Decode every frame of LOG with cantools.\n\n" + __doc__.split("\n\n")[1])
    add_log_arguments(parser)
    add_dbc_arguments(parser)
    parser.add_argument("--bus", action="append", default=[], metavar="NAME", help="only these buses")
    parser.add_argument("--signals", nargs="+", default=None, metavar="GLOB",
                        help="only signals whose Message.Signal or VSS path matches")
    parser.add_argument("--format", choices=("csv", "jsonl", "wide-csv"), default="csv",
                        help="csv: one sample per line (default); wide-csv: one frame per line, a column per "
                             "signal; jsonl: one sample per JSON line")
    parser.add_argument("-o", "--output", default="-", metavar="OUT", help="output file (default: stdout)")
    parser.set_defaults(func=run)


class SampleWriter:
    """Writes one line per sample; choices keep both the number and the label."""

    def __init__(self, out: TextIO, fmt: str, decoder: Decoder) -> None:
        self._out = out
        self._json = fmt == "jsonl"
        self._decoder = decoder
        self._csv = None if self._json else csv.writer(out, lineterminator="\n")
        if self._csv:
            self._csv.writerow(FIELDS)
        self.samples = 0

    def write(self, frame: DecodedFrame) -> None:
        specs = self._decoder.specs
        prefix = frame.message + "."
        for name, raw in frame.raw.items():
            spec = specs[prefix + name]
            value = spec.to_physical(raw)
            label = spec.label(raw)
            self.samples += 1
            if self._json:
                record = {"timestamp": frame.timestamp, "bus": frame.bus, "signal": spec.key, "value": value,
                          "unit": spec.unit}
                if label is not None:
                    record["label"] = label
                self._out.write(json.dumps(record) + "\n")
            else:
                self._csv.writerow((repr(frame.timestamp), frame.bus, spec.key, repr(value), spec.unit, label or ""))


class WideWriter:
    """One line per frame; the columns are every signal the filter admits, in DBC order, fixed up front so
    the file streams (a pipe from candump has no end to wait for)."""

    def __init__(self, out: TextIO, decoder: Decoder) -> None:
        self._decoder = decoder
        self._csv = csv.writer(out, lineterminator="\n")
        wanted = decoder.wanted
        self.columns = [key for key, spec in decoder.specs.items() if wanted is None or wanted(spec)]
        self._index = {key: i for i, key in enumerate(self.columns)}
        self._csv.writerow((*WIDE_FIELDS, *self.columns))
        self._blank = [""] * len(self.columns)
        self.samples = 0

    def write(self, frame: DecodedFrame) -> None:
        specs, index = self._decoder.specs, self._index
        prefix = frame.message + "."
        cells = self._blank.copy()
        for name, raw in frame.raw.items():
            key = prefix + name
            cells[index[key]] = repr(specs[key].to_physical(raw))
        self.samples += len(frame.raw)
        self._csv.writerow((repr(frame.timestamp), frame.bus, frame.message, *cells))


def run(args: argparse.Namespace) -> int:
    decoder = decoder_from_args(args, wanted=glob_filter(args.signals))
    source = log_source_from_args(args)
    buses = set(args.bus)
    target = nullcontext(sys.stdout) if args.output == "-" else open(args.output, "w", encoding="utf-8", newline="")
    with target as out:
        writer = WideWriter(out, decoder) if args.format == "wide-csv" else SampleWriter(out, args.format, decoder)
        decode, write = decoder.decode, writer.write
        for bus, msg in frames(source, f"decode {args.log}"):
            if buses and bus not in buses:
                continue
            frame = decode(msg, bus)
            if frame is not None:
                write(frame)
    report_reading("decode", source)
    if source.stats.warning:  # the log was read to its end and held no frame: nothing to decode is a failure
        print(f"vehicle-agent decode: error: {source.stats.warning}", file=sys.stderr)
        return 1
    total = decoder.total()
    print(f"decoded {total.decoded} of {total.frames} frames into {writer.samples} samples "
          f"({total.unknown_id} frames with an unknown id, {total.wrong_length} wrong length, "
          f"{total.decode_errors} decode errors)", file=sys.stderr)
    return say_hints("decode", nothing_matched(args, source, decoder), nothing_decoded=total.decoded == 0)
