"""Reading a log for the engineers' commands (decode, stats, replay), the one way they all do it.

- ``LOG`` may be ``-``: candump text on standard input (``candump -L can0 | vehicle-agent decode - ...``).
- Damaged lines are skipped and counted, naming file:line, unless ``--strict`` (then the first stops the
  command with exit 1); a file that ends early keeps what was read before, and says so.
- A progress bar on a terminal (total, rate, time left: the file's size drives it).
- Mistakes do not pass silently: a ``--dbc BUS=FILE`` binding or a ``--bus`` filter naming a bus the log
  does not have, and a ``--signals`` glob matching no signal of the DBCs, are named together with what
  the log's buses and the DBCs' signals are.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
from collections.abc import Iterable, Iterator

import can

from agent.cli.progress import progress
from agent.decode import ALL_DBCS, Decoder
from agent.sources.candump_text import CandumpTextSource
from agent.sources.log import LogSource

STDIN = "-"
SHOWN = 8  # names listed in a hint before "..."
_PROGRESS_EVERY = 4096  # frames between bar updates (a bar update costs about as much as decoding a frame)


def add_log_arguments(parser: argparse.ArgumentParser, what: str = "LOG") -> None:
    parser.add_argument("log", metavar="LOG",
                        help=f"{what}: candump .log, .asc, .blf, .trc, .csv (.gz too), .mf4; "
                             "'-' reads candump text (candump -L or its screen form) from standard input")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first damaged line (exit 1) instead of skipping and counting it")


def open_log(args: argparse.Namespace, bus_map: dict[str, str]) -> LogSource | CandumpTextSource:
    strict = bool(getattr(args, "strict", True))  # commands without --strict stop at damage, as before
    if args.log == STDIN:
        return CandumpTextSource(sys.stdin, bus_map=bus_map, strict=strict)
    return LogSource(args.log, bus_map=bus_map, strict=strict, skip_damaged=not strict)


def frames(source: LogSource | CandumpTextSource, label: str) -> Iterator[tuple[str, can.Message]]:
    """The source's frames, with a progress bar on a terminal."""
    size = source.size
    unit = "bytes" if size else "frames"
    with progress(label, total=size, unit=unit) as bar:
        pending = 0
        for item in source:
            yield item
            pending += 1
            if pending == _PROGRESS_EVERY:
                bar.advance(pending, position=source.position)
                pending = 0
        bar.advance(pending, position=size)


def report_reading(command: str, source: LogSource | CandumpTextSource) -> None:
    """What the reading skipped or where it stopped (a non-strict read keeps going and says so here)."""
    note = source.stats.damage_note()
    if note:
        print(f"vehicle-agent {command}: warning: {note}", file=sys.stderr)
    if source.stats.error:
        print(f"vehicle-agent {command}: warning: {source.stats.error}; the frames before it were used",
              file=sys.stderr)


def _listed(names: Iterable[str]) -> str:
    names = list(names)
    shown = ", ".join(names[:SHOWN])
    return shown + (f", ... ({len(names)} in all)" if len(names) > SHOWN else "")


def nothing_matched(args: argparse.Namespace, source: LogSource | CandumpTextSource,
                    decoder: Decoder | None) -> list[str]:
    """Hints for the bindings and filters of the command line that matched nothing in this log."""
    seen = source.stats.buses
    have = _listed(f"{bus} ({n} frames)" for bus, n in sorted(seen.items())) or "none"
    hints = []
    bound = {spec.rpartition("=")[0] for spec in getattr(args, "dbc", None) or () if "=" in spec}
    for bus in sorted(bound):
        if bus != ALL_DBCS and bus not in seen:
            hints.append(f"--dbc {bus}=...: the log has no bus {bus!r}; its buses are {have} "
                         f"(bind to one of those, or name channels with --bus-map CHANNEL=BUS)")
    for bus in getattr(args, "bus", None) or ():
        if bus not in seen:
            hints.append(f"--bus {bus}: the log has no bus {bus!r}; its buses are {have}")
    if decoder is not None:
        keys = sorted(decoder.specs)
        paths = {spec.vss_path for spec in decoder.specs.values() if spec.vss_path}
        for pattern in getattr(args, "signals", None) or ():
            if not any(fnmatch.fnmatchcase(k, pattern) for k in keys) and \
                    not any(fnmatch.fnmatchcase(p, pattern) for p in paths):
                hints.append(f"--signals {pattern!r} matches no signal of the DBCs (Message.Signal or VSS path; "
                             f"case matters); they have {_listed(keys)}")
    return hints


def say_hints(command: str, hints: list[str], nothing_decoded: bool) -> int:
    """Print the hints; exit status 1 when nothing was decoded (the command did nothing useful)."""
    level = "error" if nothing_decoded else "warning"
    for hint in hints:
        print(f"vehicle-agent {command}: {level}: {hint}", file=sys.stderr)
    if nothing_decoded and not hints:
        print(f"vehicle-agent {command}: error: no frame decoded: none of the log's frame ids is a message of "
              "the DBCs on its bus (vehicle-agent stats LOG --dbc ... lists what the log holds)", file=sys.stderr)
    return 1 if nothing_decoded else 0
