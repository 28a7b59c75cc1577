"""``vehicle-agent plot LOG_OR_DB --signals GLOB... -o out.png``: signals over time, one panel per unit.

Like ``cantools plot``, from any log format python-can reads (decoded with ``--dbc``), from a buffer
database (the agent's batches, decoded by ``agent.batch.format``) or from the reference receiver's
database (its ``samples`` table).  A SQLite file is told apart from a log by its header, a buffer from a
receiver database by its tables.  Without ``--dbc`` a database's units are unknown: each signal then gets
its own panel.  matplotlib (the ``tools`` extra) is imported only here, with the Agg backend (no display).
"""

from __future__ import annotations

import argparse
import fnmatch
import sqlite3
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from agent.batch.format import BatchError
from agent.batch.reading import decode_batch, iter_samples
from agent.buffer.store import BatchStore
from agent.cli.common import add_dbc_arguments, decoder_from_args, glob_filter, log_source_from_args
from agent.cli.framework import add_command
from agent.cli.inspect import SQLITE_MAGIC
from agent.decode import Decoder
from agent.model import SignalSpec
from agent.sources.log import LogSource

SHOWN_SIGNALS = 12  # how many available signals an error message names
LEGEND_LINES = 12  # a longer legend would cover its panel
EPOCH_2000 = 946_684_800  # timestamps past this are wall-clock times (a logger's clock starts near 0)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "plot", "plot signals over time to a PNG (one panel per unit)", examples=(
        "vehicle-agent plot drive.log --dbc dbc/kona-ev/pcan.dbc --signals 'VCU_*.*Speed*' -o speed.png",
        "vehicle-agent plot state/buffer.db --dbc dbc/css-electronics/canmod-gps.dbc --signals 'gnss_*' -o gps.png",
        "vehicle-agent plot receiver.db --signals 'Vehicle.Speed' 'Vehicle.CurrentLocation.*' -o cloud.png",
    ), description="LOG_OR_DB is a CAN log (.log candump, .asc, .blf, .trc, .csv, .gz too), a buffer database "
                   "(vehicle-agent replay/run) or a receiver database (vehicle-sim receive). GLOBs match "
                   "Message.Signal or the catalog's VSS path. Needs the `tools` extra (matplotlib).")
    parser.add_argument("log", metavar="LOG_OR_DB", help="CAN log, buffer database or receiver database")
    add_dbc_arguments(parser, required=False)
    parser.add_argument("--signals", nargs="+", required=True, metavar="GLOB",
                        help="signals to plot: Message.Signal or VSS path globs")
    parser.add_argument("--bus", action="append", default=[], metavar="NAME", help="only these buses")
    parser.add_argument("-o", "--output", required=True, metavar="PNG", help="image to write")
    parser.add_argument("--size", default="12x8", metavar="WxH", help="figure size in inches (default 12x8)")
    parser.add_argument("--dpi", type=int, default=100, help="dots per inch (default 100)")
    parser.add_argument("--title", default=None, help="figure title (default: the input file's name)")
    parser.set_defaults(func=run)


@dataclass
class Series:
    bus: str
    key: str
    unit: str | None  # None: unknown (no DBC for a database's samples)
    times: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


class NothingToPlot(ValueError):
    """No sample matched: the message says which globs and lists what there is."""


def input_kind(path: Path) -> str:
    """``log``, ``buffer`` or ``receiver``."""
    try:
        with path.open("rb") as handle:
            head = handle.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if head != SQLITE_MAGIC:
        return "log"
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"{path}: SQLite file that cannot be read: {exc}") from None
    if "batches" in tables and "meta" in tables:
        return "buffer"
    if "samples" in tables:
        return "receiver"
    raise ValueError(f"{path}: a SQLite database that is neither a buffer (tables meta, batches) nor a receiver "
                     f"database (table samples); its tables: {', '.join(sorted(tables)) or 'none'}")


def _key_matcher(args: argparse.Namespace, specs: dict[str, SignalSpec]) -> Callable[[str], bool]:
    """Globs on a key: through its DBC spec (Message.Signal or VSS path) when the DBC is known, else the key."""
    wanted = glob_filter(args.signals)

    def matches(key: str) -> bool:
        spec = specs.get(key)
        if spec is not None:
            return wanted(spec)
        return any(fnmatch.fnmatchcase(key, pattern) for pattern in args.signals)

    return matches


def _log_samples(decoder: Decoder, source: LogSource) -> Iterator[tuple[float, str, str, float]]:
    for bus, msg in source:
        frame = decoder.decode(msg, bus)
        if frame is not None:
            for name, value in decoder.physical(frame).items():
                yield frame.timestamp, bus, f"{frame.message}.{name}", value
    if source.stats.warning:  # e.g. "FILE: no CAN frames: the file is empty (0 bytes)"
        raise ValueError(source.stats.warning)


def _buses(counts: dict[str, int]) -> str:
    return ", ".join(f"{bus} ({n} frames)" for bus, n in counts.items()) or "none"


def _buffer_samples(path: Path, matches: Callable[[str], bool]) -> Iterator[tuple[float, str, str, float]]:
    with BatchStore(path, read_only=True) as store:
        dictionaries = store.dictionaries()
        for stored in store.pending(limit=1 << 62):
            try:
                decoded = decode_batch(stored.payload, dictionaries)
            except BatchError as exc:
                print(f"vehicle-agent plot: {path}: batch {stored.id} skipped: {exc}", file=sys.stderr)
                continue
            for timestamp, bus, key, value, _raw in iter_samples(decoded):
                if matches(key):
                    yield timestamp, bus, key, value


def _database_keys(path: Path, kind: str) -> list[str]:
    if kind == "receiver":
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            return [row[0] for row in db.execute("SELECT DISTINCT key FROM samples ORDER BY key")]
    return sorted({key for _t, _b, key, _v in _buffer_samples(path, lambda key: True)})


def _receiver_samples(path: Path, keys: list[str]) -> Iterator[tuple[float, str, str, float]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        marks = ",".join("?" * len(keys))
        yield from db.execute(f"SELECT timestamp, bus, key, value FROM samples WHERE key IN ({marks})"
                              " ORDER BY timestamp", keys)


def _no_match(patterns: list[str], available: list[str], where: str) -> str:
    shown = ", ".join(available[:SHOWN_SIGNALS]) + (", ..." if len(available) > SHOWN_SIGNALS else "")
    return (f"--signals {' '.join(repr(p) for p in patterns)} matched no signal of {where}; "
            f"{len(available)} signals there" + (f", e.g. {shown}" if available else ""))


def collect(args: argparse.Namespace) -> tuple[dict[tuple[str, str], Series], dict[str, SignalSpec]]:
    """The samples of the matching signals, per (bus, key), and the DBC specs (empty without --dbc)."""
    path = Path(args.log)
    kind = input_kind(path)
    wanted = glob_filter(args.signals)
    decoder = decoder_from_args(args, wanted=wanted) if args.dbc else None
    specs = decoder.specs if decoder is not None else {}
    source = None
    if kind == "log":
        if decoder is None:
            raise ValueError(f"{path}: a log needs --dbc FILE... to decode it")
        if not any(wanted(spec) for spec in specs.values()):
            raise NothingToPlot(_no_match(args.signals, sorted(specs), "the DBC(s)"))
        source = log_source_from_args(args)
        samples = _log_samples(decoder, source)
    else:
        matches = _key_matcher(args, specs)
        available = _database_keys(path, kind)
        keys = [key for key in available if matches(key)]
        if not keys:
            raise NothingToPlot(_no_match(args.signals, available, f"{path} ({kind} database)"))
        samples = _receiver_samples(path, keys) if kind == "receiver" else _buffer_samples(path, matches)
    buses = set(args.bus)
    series: dict[tuple[str, str], Series] = {}
    for timestamp, bus, key, value in samples:
        if (buses and bus not in buses) or not isinstance(value, (int, float)):
            continue
        line = series.get((bus, key))
        if line is None:
            spec = specs.get(key)
            line = series[(bus, key)] = Series(bus, key, spec.unit if spec else None)
        line.times.append(timestamp)
        line.values.append(value)
    if not series:
        only = f" on bus {', '.join(sorted(buses))}" if buses else ""
        detail = ""
        if source is not None:  # say what the log holds and how the DBCs were bound: the usual mistake
            messages = sorted({spec.message for spec in specs.values() if wanted(spec)})
            detail = (f" (no frame of {', '.join(messages[:SHOWN_SIGNALS])} decoded; the log's buses: "
                      f"{_buses(source.stats.buses)}; --dbc {' '.join(args.dbc)})")
        raise NothingToPlot(f"{path}: no sample of the signals matching {' '.join(args.signals)}{only}{detail}")
    return series, specs


def _unmatched_globs(args: argparse.Namespace, series: dict[tuple[str, str], Series],
                     specs: dict[str, SignalSpec]) -> list[str]:
    keys = {key for _bus, key in series}
    return [p for p in args.signals
            if not any(fnmatch.fnmatchcase(k, p) or (k in specs and fnmatch.fnmatchcase(specs[k].vss_path, p))
                       for k in keys)]


def draw(series: dict[tuple[str, str], Series], args: argparse.Namespace) -> tuple[int, int]:
    """Writes the figure; returns (panels, samples)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError("plot needs matplotlib: pip install 'vehicle-edge-agent[tools]'") from None
    width, _, height = args.size.lower().partition("x")
    try:
        size = (float(width), float(height))
    except ValueError:
        raise ValueError(f"--size: expected WIDTHxHEIGHT in inches, e.g. 12x8, got {args.size!r}") from None
    panels: dict[str, list[Series]] = {}
    for line in series.values():
        panels.setdefault(line.unit if line.unit is not None else f"\0{line.key}", []).append(line)
    start = min(min(line.times) for line in series.values())
    several_buses = len({line.bus for line in series.values()}) > 1
    figure = Figure(figsize=size, dpi=args.dpi, layout="constrained")
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (unit, lines) in zip(axes, sorted(panels.items())):
        for line in sorted(lines, key=lambda s: (s.key, s.bus)):
            label = f"{line.key} [{line.bus}]" if several_buses else line.key
            ax.plot([t - start for t in line.times], line.values, label=label, linewidth=1)
        ax.set_ylabel(unit.lstrip("\0").rsplit(".", 1)[-1] if unit.startswith("\0") else unit or "(no unit)")
        ax.grid(True, alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        more = len(handles) - LEGEND_LINES
        ax.legend(handles[:LEGEND_LINES], labels[:LEGEND_LINES], loc="upper right", fontsize="x-small",
                  ncols=2 if len(handles) > LEGEND_LINES // 2 else 1, title=f"and {more} more" if more > 0 else None,
                  title_fontsize="x-small")
    started = (f" from {datetime.fromtimestamp(start).astimezone().isoformat(timespec='seconds')}"
               if start > EPOCH_2000 else f" from {start:.3f} s (log clock)")
    axes[-1].set_xlabel(f"time (s){started}")
    figure.suptitle(args.title or Path(args.log).name)
    figure.savefig(args.output)
    return len(panels), sum(len(line.values) for line in series.values())


def run(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if not output.parent.is_dir():
        raise ValueError(f"{output}: directory {output.parent} does not exist")
    series, specs = collect(args)
    for pattern in _unmatched_globs(args, series, specs):
        print(f"vehicle-agent plot: warning: --signals {pattern!r} matched nothing that has samples", file=sys.stderr)
    panels, samples = draw(series, args)
    print(f"plotted {len(series)} signals ({samples} samples) in {panels} panels to {output}")
    return 0
