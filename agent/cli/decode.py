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
import io
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


class _FrameTextCache:
    """The text of a frame's lines but its timestamp, per decoded payload.

    The decoder hands out the same ``raw`` dict for a repeated payload on a bus (its decode cache), and
    payloads repeat (the reason for that cache), so each distinct payload is formatted once.  Entries keep
    their dict alive, so an id cannot be reused while it is a key; the cache is bounded."""

    LIMIT = 65_536

    def __init__(self, render) -> None:
        self._render = render
        self._texts: dict[int, tuple[dict, object]] = {}

    def get(self, frame: DecodedFrame) -> object:
        raw = frame.raw
        entry = self._texts.get(id(raw))
        if entry is None:
            if len(self._texts) >= self.LIMIT:
                self._texts.clear()
            entry = self._texts[id(raw)] = (raw, self._render(frame))
        return entry[1]


def _csv_line(*cells: str) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue()


class SampleWriter:
    """Writes one line per sample; choices keep both the number and the label."""

    def __init__(self, out: TextIO, fmt: str, decoder: Decoder) -> None:
        self._out = out
        self._json = fmt == "jsonl"
        self._decoder = decoder
        self._texts = _FrameTextCache(self._render_json if self._json else self._render_csv)
        if not self._json:
            out.write(_csv_line(*FIELDS))
        self.samples = 0

    def _samples(self, frame: DecodedFrame):
        specs = self._decoder.specs
        prefix = frame.message + "."
        for name, raw in frame.raw.items():
            spec = specs[prefix + name]
            yield spec, spec.to_physical(raw), spec.label(raw)

    def _render_csv(self, frame: DecodedFrame) -> tuple[str, ...]:
        """Each sample's line after the timestamp: ",bus,signal,value,unit,label\n"."""
        return tuple("," + _csv_line(frame.bus, spec.key, repr(value), spec.unit, label or "")
                     for spec, value, label in self._samples(frame))

    def _render_json(self, frame: DecodedFrame) -> tuple[str, ...]:
        """Each sample's JSON object after its timestamp: ', "bus": ..., "signal": ...}\n'."""
        texts = []
        for spec, value, label in self._samples(frame):
            record = {"bus": frame.bus, "signal": spec.key, "value": value, "unit": spec.unit}
            if label is not None:
                record["label"] = label
            texts.append(", " + json.dumps(record)[1:] + "\n")
        return tuple(texts)

    def write(self, frame: DecodedFrame) -> None:
        texts = self._texts.get(frame)
        stamp = ('{"timestamp": ' if self._json else "") + repr(frame.timestamp)
        self._out.write("".join([stamp + text for text in texts]))
        self.samples += len(texts)


class WideWriter:
    """One line per frame; the columns are every signal the filter admits, in DBC order, fixed up front so
    the file streams (a pipe from candump has no end to wait for)."""

    def __init__(self, out: TextIO, decoder: Decoder) -> None:
        self._out = out
        self._decoder = decoder
        wanted = decoder.wanted
        self.columns = [key for key, spec in decoder.specs.items() if wanted is None or wanted(spec)]
        self._index = {key: i for i, key in enumerate(self.columns)}
        out.write(_csv_line(*WIDE_FIELDS, *self.columns))
        self._texts = _FrameTextCache(self._render)
        self.samples = 0

    def _render(self, frame: DecodedFrame) -> str:
        """The line after the timestamp: ",bus,message,cells...\n"."""
        specs, index = self._decoder.specs, self._index
        prefix = frame.message + "."
        cells = [""] * len(self.columns)
        for name, raw in frame.raw.items():
            key = prefix + name
            cells[index[key]] = repr(specs[key].to_physical(raw))
        return "," + _csv_line(frame.bus, frame.message, *cells)

    def write(self, frame: DecodedFrame) -> None:
        self._out.write(repr(frame.timestamp) + self._texts.get(frame))
        self.samples += len(frame.raw)


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
