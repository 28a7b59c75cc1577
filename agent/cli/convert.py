"""``vehicle-agent convert IN OUT``: a CAN log from one of python-can's formats to another.

The extensions pick the formats (python-can's ``LogReader`` through ``agent.sources.log`` and ``can.Logger``).
What python-can's writers would lose silently is handled or said:

* bus names in formats that number channels (ASC, BLF, TRC): ``can1`` stays channel 1, other names
  (``pcan``, ``ccan``) get the free numbers in order of appearance, and the mapping is printed;
* CSV has no channel column: several buses are merged, which is said;
* a frame stamped before the log's first frame (a logger clock reset, interleaved buses): the candump,
  ASC and BLF writers measure time from the first frame and would restamp or misplace it, so they are
  started at the earliest timestamp instead (found in a first pass);
* TRC holds neither remote nor error frames: they are skipped and counted;
* MF4 numbers its bus channels from 1 (a CANedge's channel 1 is ``can0``) and python-can's writer stores
  the channel as given, so ``canN`` is written as channel N+1; its header start time is set to the log's
  earliest frame (python-can's writer would use the time of the conversion), so the stored offsets are small
  and keep their precision.  The file is only written when the writer stops, before the rename.

The output is written to a temporary file beside OUT and renamed at the end, so a failed conversion never
leaves half a file, nor (with --force) destroys the old one.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import can
from can.io.logger import MESSAGE_WRITERS
from can.io.player import MESSAGE_READERS
from can.util import channel2int

from agent.cli.framework import add_command
from agent.cli.progress import progress
from agent.sources.log import TEXT_SUFFIXES, LogError, LogSource

# python-can compresses (.gz) the text formats only.
COMPRESSIBLE = TEXT_SUFFIXES
NUMBERED_CHANNELS = {".asc", ".blf", ".trc", ".mf4"}
NO_REMOTE_OR_ERROR = {".trc"}  # python-can's TRC writer drops them with a warning per frame
FIRST_CHANNEL = {".mf4": 1}  # formats whose writer stores the channel number as given and that count from 1


def known_formats() -> list[str]:
    """Formats python-can both reads and writes, with the .gz forms it supports."""
    plain = sorted(set(MESSAGE_READERS) & set(MESSAGE_WRITERS))
    return plain + [suffix + ".gz" for suffix in plain if suffix in COMPRESSIBLE]


def format_of(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    name = "".join(suffixes[-2:]) if suffixes[-1:] == [".gz"] else "".join(suffixes[-1:])
    if name not in known_formats():
        raise ValueError(f"{path}: unknown log format {name or '(no extension)'!r}; "
                         f"known: {', '.join(known_formats())}")
    return name


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "convert", "convert a CAN log between python-can's formats", examples=(
        "vehicle-agent convert drive.log drive.asc",
        "vehicle-agent convert bench.blf bench.log.gz --force",
    ), description="The extensions pick the formats: .log (candump -L), .asc (Vector ASCII), .blf (Vector "
                   "binary), .trc (PEAK), .csv (python-can), .db (python-can SQLite), .mf4 (needs asammdf), "
                   "and .gz forms of the text formats. Bus names that a numbered format cannot hold are "
                   "mapped to channel numbers, and the mapping is printed.")
    parser.add_argument("input", metavar="IN", help="log to read")
    parser.add_argument("output", metavar="OUT", help="log to write (its extension picks the format)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.set_defaults(func=run)


@dataclass
class Survey:
    """What the first pass learns: how many frames, the earliest timestamp, the buses in order of appearance."""

    frames: int = 0
    first: float | None = None
    earliest: float = math.inf
    before_first: int = 0  # frames stamped earlier than the first frame
    buses: dict[str, int] = field(default_factory=dict)
    error: str | None = None


def survey(path: Path) -> Survey:
    source = LogSource(path, strict=False)
    found = Survey()
    for bus, msg in source:
        found.frames += 1
        if found.first is None:
            found.first = msg.timestamp
        elif msg.timestamp < found.first:
            found.before_first += 1
        found.earliest = min(found.earliest, msg.timestamp)
        found.buses.setdefault(bus, len(found.buses))
    if source.stats.warning:
        raise LogError(f"{source.stats.warning}; nothing to convert")
    found.error = source.stats.error
    return found


def channel_numbers(buses: list[str]) -> dict[str, int]:
    """Bus name -> 0-based channel for a numbered format: ``canN`` and plain numbers keep N, other names
    take the lowest free numbers in order of appearance."""
    numbers = {bus: channel2int(bus) for bus in buses}
    taken = {n for n in numbers.values() if n is not None}
    free = (n for n in range(len(buses) + len(taken) + 1) if n not in taken)
    return {bus: number if number is not None else next(free) for bus, number in numbers.items()}


def start_writer_at(writer: can.io.generic.MessageWriter, earliest: float) -> None:
    """Make a writer measure time from ``earliest`` instead of from the first frame it is given (see the
    module docstring).  These are the writers' own fields (python-can 4.x); the round-trip tests on the
    clock-reset Kona log notice if a python-can release changes them."""
    if isinstance(writer, can.CanutilsLogWriter):
        writer.last_timestamp = earliest  # frames before this one would be written with its timestamp
    elif isinstance(writer, can.ASCWriter):
        writer.log_event("Start of measurement", earliest)  # what the writer does on its first frame
    elif isinstance(writer, can.BLFWriter):
        writer.start_timestamp = math.floor(earliest * 1000) / 1000  # the header holds milliseconds
    elif isinstance(writer, can.MF4Writer):
        # The header holds an absolute time (not before 1970): a log on its own clock (from 0, reset, negative)
        # starts at the epoch and its frames keep their offsets, negative ones included.
        start = max(0.0, math.floor(earliest * 1e6) / 1e6)
        writer._mdf.header.start_time = datetime.fromtimestamp(start, tz=timezone.utc)
        writer._start_time = writer.last_timestamp = start


def temporary_path(output: Path) -> Path:
    """Beside OUT, with OUT's extensions (they pick the writer) and no other dot (python-can's gzip writer
    wants exactly two suffixes)."""
    suffixes = "".join(output.suffixes[-2:] if output.suffixes[-1:] == [".gz"] else output.suffixes[-1:])
    stem = output.name[: len(output.name) - len(suffixes)].replace(".", "_")
    return output.with_name(f".{stem}-converting-{os.getpid()}{suffixes}")


def _check_paths(source: Path, output: Path, force: bool) -> tuple[str, str]:
    in_format, out_format = format_of(source), format_of(output)
    if not source.is_file():
        raise LogError(f"{source}: no such file")
    if output.resolve() == source.resolve() or (output.exists() and os.path.samefile(source, output)):
        raise ValueError(f"{output}: OUT is the input file; give another name")
    if output.exists() and not force:
        raise ValueError(f"{output}: exists; use --force to replace it")
    if not output.parent.is_dir():
        raise ValueError(f"{output}: directory {output.parent} does not exist")
    return in_format, out_format


def run(args: argparse.Namespace) -> int:
    source, output = Path(args.input), Path(args.output)
    _, out_format = _check_paths(source, output, args.force)
    found = survey(source)
    plain_format = out_format.removesuffix(".gz")
    numbers = channel_numbers(list(found.buses)) if plain_format in NUMBERED_CHANNELS else {}
    skip_special = plain_format in NO_REMOTE_OR_ERROR
    first_channel = FIRST_CHANNEL.get(plain_format, 0)
    temporary = temporary_path(output)
    written = skipped = 0
    bar = progress(f"converting {source.name}", total=found.frames, unit="frames")
    try:
        try:
            writer = can.Logger(str(temporary))
        except (ImportError, NotImplementedError) as exc:  # python-can's MF4Writer without asammdf: the latter
            raise ValueError(f"{output}: writing {out_format} needs an optional package: {exc}") from None
        try:
            if found.before_first or isinstance(writer, can.MF4Writer):
                start_writer_at(writer, found.earliest)
            for bus, msg in LogSource(source, strict=False):
                if skip_special and (msg.is_remote_frame or msg.is_error_frame):
                    skipped += 1
                    continue
                if numbers:
                    msg.channel = numbers[bus] + first_channel
                writer.on_message_received(msg)
                written += 1
                bar.advance()
        finally:
            writer.stop()
            bar.close()
        os.replace(temporary, output)
    finally:
        if temporary.exists():
            temporary.unlink()
    print(f"converted {written} frames from {source} to {output}"
          + (f"; skipped {skipped} remote/error frames ({plain_format} cannot hold them)" if skipped else ""))
    renamed = {bus: n for bus, n in numbers.items() if channel2int(bus) != n}
    if renamed:
        print("  channels: " + ", ".join(f"{bus} -> can{n}" for bus, n in numbers.items())
              + f" ({plain_format} numbers channels; read back as can0, can1, ...)")
    if plain_format == ".csv" and len(found.buses) > 1:
        print(f"  warning: .csv has no channel column: buses {', '.join(found.buses)} are merged", file=sys.stderr)
    if found.before_first:
        print(f"  {found.before_first} frames are stamped before the first one (earliest {found.earliest:.6f} s, "
              f"first {found.first:.6f} s): kept with their timestamps")
    if found.error:
        print(f"vehicle-agent convert: error: {found.error}; the {written} frames before the damage were converted",
              file=sys.stderr)
        return 1
    return 0
