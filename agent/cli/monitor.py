"""``vehicle-agent monitor``: a live view of a bus or of a replayed log, one row per message.

Like ``cantools monitor`` and can-utils' ``cansniffer``: per (bus, id) the frame count, the rate (frames/s
over the last frames, by their own timestamps) and the last decoded values (raw hex for ids the DBCs do
not know).  On a terminal the table is drawn with rich and refreshed 4 times a second; ``q`` or Ctrl-C
quits and the terminal is put back as it was.  A replayed log is paced at its own rate (``--speed``
scales it; 0 = as fast as possible); when it ends the view stays until ``q``.  ``--once`` (or an output
that is not a terminal) prints the table once when the run ends: at the end of the log, after
``--duration`` or on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import select
import sys
import termios
import threading
import time
import tty
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import can

from agent.cli.busargs import add_live_bus_arguments, live_bus_specs
from agent.cli.common import add_dbc_arguments, decoder_from_args, log_source_from_args
from agent.cli.framework import add_command
from agent.decode import Decoder
from agent.sources.live import LiveSource
from agent.timespec import duration_type

RATE_WINDOW = 50  # frames per row the rate is measured over
REFRESH_PER_S = 4
QUIT_KEYS = (b"q", b"Q")
MIN_SLEEP_S = 0.001  # pacing: shorter waits are left to the next frame (the schedule is absolute)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "monitor", "live view of a bus or a replayed log: rate and last values",
                         examples=(
        "vehicle-agent monitor -i socketcan -c can0 --dbc dbc/kona-ev/pcan.dbc",
        "vehicle-agent monitor --log drive.log --dbc pcan=dbc/kona-ev/pcan.dbc --speed 2",
        "vehicle-agent monitor --log drive.log --dbc dbc/kona-ev/pcan.dbc --once --speed 0 > summary.txt",
    ), description="One row per message (bus and id): count, rate in frames/s and the last decoded values, "
                   "like `cantools monitor` or `cansniffer`; ids the DBCs do not know show their data in hex. "
                   "q or Ctrl-C quits.")
    parser.add_argument("--log", metavar="FILE", help="replay this log instead of reading a live bus")
    parser.add_argument("--speed", type=float, default=1.0, metavar="X",
                        help="replay speed: 1 = the log's own rate (default), 0 = as fast as possible")
    parser.add_argument("--duration", type=duration_type("--duration"), default=None, metavar="TIME",
                        help="stop after this long (90s, 10m)")
    parser.add_argument("--once", action="store_true", help="no live view: print the table once at the end")
    add_dbc_arguments(parser, required=False)
    add_live_bus_arguments(parser)
    parser.set_defaults(func=run)


@dataclass(slots=True)
class Row:
    bus: str
    frame_id: int
    extended: bool
    name: str = ""
    count: int = 0
    rate: float | None = None
    data: bytes = b""
    raw: dict | None = None  # the decoder's raw values of the last frame (shared with its cache: read only)
    times: deque = field(default_factory=lambda: deque(maxlen=RATE_WINDOW))

    @property
    def id_text(self) -> str:
        return f"{self.frame_id:08X}" if self.extended else f"{self.frame_id:03X}"


class MonitorView:
    """The rows, fed by the main thread; rendered (rich's refresh thread or at the end) from plain fields."""

    def __init__(self, decoder: Decoder | None, source_name: str) -> None:
        self.decoder = decoder
        self.source_name = source_name
        self.rows: dict[tuple[str, int, bool], Row] = {}
        self.frames = 0
        self.status = "running"

    def add(self, bus: str, msg: can.Message) -> None:
        self.frames += 1
        key = (bus, msg.arbitration_id, msg.is_extended_id)
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = Row(bus, msg.arbitration_id, msg.is_extended_id)
        row.count += 1
        times = row.times
        if times and msg.timestamp < times[-1]:  # the clock stepped back (a reset): measure afresh
            times.clear()
        times.append(msg.timestamp)
        span = times[-1] - times[0]
        row.rate = (len(times) - 1) / span if span > 0 else row.rate
        row.data = bytes(msg.data)
        frame = self.decoder.decode(msg, bus) if self.decoder is not None else None
        row.name, row.raw = (frame.message, frame.raw) if frame is not None else (row.name, None)

    def values(self, row: Row) -> str:
        if row.raw is None or self.decoder is None:
            return row.data.hex(" ").upper()
        specs = self.decoder.specs
        parts = []
        for name, raw in row.raw.items():
            spec = specs[f"{row.name}.{name}"]
            label = spec.label(raw)
            parts.append(f"{name}={label}" if label is not None
                         else f"{name}={spec.to_physical(raw):g}{' ' + spec.unit if spec.unit else ''}")
        return "  ".join(parts)

    def cells(self) -> Iterator[tuple[str, ...]]:
        for row in sorted(list(self.rows.values()), key=lambda r: (r.bus, r.frame_id)):
            rate = "-" if row.rate is None else f"{row.rate:.1f}"
            yield row.bus, row.id_text, row.name or "-", str(row.count), rate, self.values(row)

    def caption(self) -> str:
        return f"{self.source_name}: {self.frames} frames, {len(self.rows)} ids; {self.status}"

    def __rich__(self):
        from rich.table import Table

        table = Table(title=self.caption(), title_justify="left", expand=True, pad_edge=False)
        for heading, justify in (("bus", "left"), ("id", "right"), ("message", "left"), ("count", "right"),
                                 ("frames/s", "right")):
            table.add_column(heading, justify=justify, no_wrap=True)
        table.add_column("last values (raw hex when not decoded)", no_wrap=True, overflow="ellipsis", ratio=1)
        for cells in self.cells():
            table.add_row(*cells)
        return table

    def plain(self) -> str:
        rows = [("bus", "id", "message", "count", "frames/s", "last values"), *self.cells()]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = [self.caption()]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5] for r in rows]
        return "\n".join(lines) + "\n"


def paced(frames: Iterable[tuple[str, can.Message]], speed: float,
          stop: threading.Event) -> Iterator[tuple[str, can.Message]]:
    """A log's frames at its own rate times ``speed`` (0: no pacing); a clock step back restarts the schedule."""
    anchor_t = anchor_wall = last_t = None
    for bus, msg in frames:
        if stop.is_set():
            return
        if speed > 0:
            t = msg.timestamp
            if anchor_t is None or t < last_t:
                anchor_t, anchor_wall = t, time.monotonic()
            delay = anchor_wall + (t - anchor_t) / speed - time.monotonic()
            if delay > MIN_SLEEP_S and stop.wait(delay):
                return
            last_t = t
        yield bus, msg


def read_keys(stop: threading.Event, on_quit: Callable[[], None]) -> None:
    """Thread: ``q`` (or the end of standard input) quits."""
    fd = sys.stdin.fileno()
    while not stop.is_set():
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            key = os.read(fd, 1)
            if key in QUIT_KEYS or not key:
                on_quit()
                return


def run(args: argparse.Namespace) -> int:
    if args.speed < 0:
        raise ValueError(f"--speed must be >= 0, got {args.speed}")
    decoder = decoder_from_args(args) if args.dbc else None
    stop = threading.Event()
    live: LiveSource | None = None
    if args.log:
        log = log_source_from_args(args)
        frames: Iterable[tuple[str, can.Message]] = paced(log, args.speed, stop)
        name = str(args.log)
    else:
        specs = live_bus_specs(args)
        live = frames = LiveSource.connect(dict(specs))
        name = ", ".join(bus for bus, _ in specs)

    def quit_now() -> None:
        stop.set()
        if live is not None:
            live.stop()

    view = MonitorView(decoder, name)
    interactive = sys.stdout.isatty() and not args.once
    timer = threading.Timer(args.duration, quit_now) if args.duration is not None else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        if interactive:
            _interactive(view, frames, stop, quit_now)
        else:
            _feed(view, frames, stop)
    except KeyboardInterrupt:
        view.status = "interrupted"
    finally:
        quit_now()
        if timer is not None:
            timer.cancel()
        if live is not None:
            live.close()
    if not interactive:
        sys.stdout.write(view.plain())
    if args.log and log.stats.warning:  # read to its end without a frame
        print(f"vehicle-agent monitor: error: {log.stats.warning}", file=sys.stderr)
        return 1
    return 0


def _feed(view: MonitorView, frames: Iterable[tuple[str, can.Message]], stop: threading.Event) -> None:
    for bus, msg in frames:
        view.add(bus, msg)
        if stop.is_set():
            break
    view.status = "stopped" if stop.is_set() else "end of input"


def _interactive(view: MonitorView, frames: Iterable[tuple[str, can.Message]], stop: threading.Event,
                 quit_now: Callable[[], None]) -> None:
    try:
        from rich.console import Console
        from rich.live import Live
    except ImportError:
        raise ValueError("the live view needs rich: pip install 'vehicle-edge-agent[tools]' (or use --once)") \
            from None
    keys = sys.stdin.isatty()
    saved = termios.tcgetattr(sys.stdin.fileno()) if keys else None
    try:
        if keys:
            tty.setcbreak(sys.stdin.fileno())  # keys arrive one by one, unechoed; Ctrl-C still interrupts
            threading.Thread(target=read_keys, args=(stop, quit_now), daemon=True).start()
        view.status = "q quits" if keys else "Ctrl-C quits"
        with Live(view, console=Console(), refresh_per_second=REFRESH_PER_S, redirect_stderr=False):
            _feed(view, frames, stop)
            if not stop.is_set() and keys:  # the log ended: keep the last view until q
                view.status = "end of log; q quits"
                stop.wait()
    finally:
        if saved is not None:
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
