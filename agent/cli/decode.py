"""``vehicle-agent decode``: a log (or live bus) to decoded samples, CSV or JSON lines."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from contextlib import nullcontext
from typing import TextIO

from agent.cli.common import add_dbc_arguments, decoder_from_args, glob_filter, log_source_from_args
from agent.cli.framework import add_command
from agent.decode import Decoder
from agent.model import DecodedFrame

FIELDS = ("timestamp", "bus", "signal", "value", "unit", "label")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "decode", "decode a CAN log with DBC files into samples", examples=(
        "vehicle-agent decode drive.blf --dbc vehicle.dbc --signals 'EEC1.*' -o samples.csv",
        "vehicle-agent decode kona.log --dbc dbc/kona-ev/comp_can.dbc --format jsonl",
    ), description="Decode every frame of LOG with cantools; one sample per line.")
    parser.add_argument("log", metavar="LOG", help="candump .log, .asc, .blf, .trc, .csv (.gz too), .mf4")
    add_dbc_arguments(parser)
    parser.add_argument("--bus", action="append", default=[], metavar="NAME", help="only these buses")
    parser.add_argument("--signals", nargs="+", default=None, metavar="GLOB",
                        help="only signals whose Message.Signal or VSS path matches")
    parser.add_argument("--format", choices=("csv", "jsonl"), default="csv")
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


def run(args: argparse.Namespace) -> int:
    decoder = decoder_from_args(args, wanted=glob_filter(args.signals))
    source = log_source_from_args(args)
    buses = set(args.bus)
    target = nullcontext(sys.stdout) if args.output == "-" else open(args.output, "w", encoding="utf-8", newline="")
    with target as out:
        writer = SampleWriter(out, args.format, decoder)
        for bus, msg in source:
            if buses and bus not in buses:
                continue
            frame = decoder.decode(msg, bus)
            if frame is not None:
                writer.write(frame)
    if source.stats.warning:  # the log was read to its end and held no frame: nothing to decode is a failure
        print(f"vehicle-agent decode: error: {source.stats.warning}", file=sys.stderr)
        return 1
    total = decoder.total()
    print(f"decoded {total.decoded} of {total.frames} frames into {writer.samples} samples "
          f"({total.unknown_id} unknown id, {total.wrong_length} wrong length, {total.decode_errors} decode errors)",
          file=sys.stderr)
    return 0
