"""Log source: frames from recorded CAN logs through python-can's readers.

python-can reads every format (candump .log, .asc, .blf, .trc, .csv, .mf4 with
asammdf, and their .gz forms).  This module adds what an engineer needs on top:
each frame gets a bus name, a damaged file keeps the frames read before the
damage, and the error names the file and (for text formats) the line.

Some readers stop silently where a file ends early (ASC skips a cut line and
never misses "End TriggerBlock"; BLF reads a truncated object as far as it
goes): this module notices, keeps the frames before the damage and reports
"read N frames; the file ended early (...)" like any other damage.  A log that
yields no frame at all is not an error of the reader, but it is said
(``stats.warning``: "no CAN frames in N bytes (not an ASC log?)").

With ``skip_damaged`` a damaged line of a text log (candump, ASC, TRC, CSV) is
skipped and counted instead: the reader starts again after it, seeing the
file's header lines once more (an ASC reader needs its "base hex" and
"Begin Triggerblock" to read on), and ``stats.damaged`` says where.  Binary
logs (BLF, MF4) cannot be resumed past damage; they stop there as before.

Channel -> bus naming when no mapping is given: candump keeps its names
(``can0``, ``pcan``); numbered channels are normalised to ``can<N>`` counting
from 0 (ASC and BLF already count from 0, TRC and MF4 count from 1: an MF4's
BusChannel 1 is the ASC's channel 1, read as can0); CSV has no channel and
becomes ``can0``.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import can
from can.io.player import MESSAGE_READERS

from agent.sources.log_position import BinaryProbe, CountingFile, asc_detail, blf_detail
from agent.sources.mf4check import mf4_detail

TEXT_SUFFIXES = {".log", ".asc", ".trc", ".csv"}
FORMAT_NAMES = {".asc": "an ASC", ".blf": "a BLF", ".log": "a candump", ".trc": "a TRC", ".csv": "a python-can CSV",
                ".mf4": "an MF4"}
# The first channel number each reader reports.
CHANNEL_BASE = {".asc": 0, ".blf": 0, ".trc": 1, ".mf4": 1, ".log": 0, ".csv": 0}


class LogError(ValueError):
    """A log that cannot be read (further); names the file and, if known, the line."""


MAX_DAMAGE_PLACES = 10  # damaged lines named one by one in stats.damaged_at; the rest are counted


def _frames(count: int) -> str:
    return f"{count} frame" + ("" if count == 1 else "s")


def log_suffix(path: Path) -> tuple[str, bool]:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        if len(suffixes) < 2:
            raise LogError(f"{path}: compressed log without a format suffix")
        return suffixes[-2], True
    if not suffixes:
        raise LogError(f"{path}: no file suffix; expected one of {', '.join(sorted(MESSAGE_READERS))}")
    return suffixes[-1], False


def bus_name(channel: Any, suffix: str, bus_map: dict[str, str]) -> str:
    """The bus a log channel is called by (``bus_map`` first, then the defaults in the module docstring)."""
    key = "" if channel is None else str(channel)
    if key in bus_map:
        return bus_map[key]
    if channel is None:
        return bus_map.get("*", "can0")
    if isinstance(channel, int):
        normalised = f"can{channel - CHANNEL_BASE.get(suffix, 0)}"
        return bus_map.get(normalised, bus_map.get("*", normalised))
    return bus_map.get("*", key)


@dataclass
class LogStats:
    frames: int = 0
    error: str | None = None
    # Set when the log was read to its end without a frame: "FILE: no CAN frames in N bytes (...)".
    warning: str | None = None
    buses: dict[str, int] = field(default_factory=dict)
    # Damaged lines skipped (skip_damaged): how many, and the first MAX_DAMAGE_PLACES as "FILE:LINE: why".
    damaged: int = 0
    damaged_at: list[str] = field(default_factory=list)

    def damage_note(self) -> str | None:
        """One sentence on the lines skipped, for the commands' standard error."""
        if not self.damaged:
            return None
        more = f" and {self.damaged - len(self.damaged_at)} more" if self.damaged > len(self.damaged_at) else ""
        lines = "line" if self.damaged == 1 else "lines"
        return (f"skipped {self.damaged} damaged {lines} (kept the {_frames(self.frames)} around them): "
                + "; ".join(self.damaged_at) + more + " (--strict stops at the first)")


class LogSource:
    """Iterates ``(bus, can.Message)`` over a log file.

    ``bus_map`` maps a log channel (as the reader reports it, or normalised
    ``canN``, or ``*`` for all) to a bus name.  With ``strict`` a damaged file
    raises ``LogError`` after yielding every frame read before the damage;
    otherwise the error is kept in ``stats.error`` and iteration just ends.
    With ``skip_damaged`` a damaged text line is skipped and counted
    (``stats.damaged``) and reading goes on after it.
    """

    def __init__(self, path: str | Path, bus_map: dict[str, str] | None = None, strict: bool = True,
                 skip_damaged: bool = False) -> None:
        self.path = Path(path)
        self.bus_map = dict(bus_map or {})
        self.strict = strict
        self.skip_damaged = skip_damaged
        self.stats = LogStats()
        self._position: Any = None
        self.suffix, self.compressed = log_suffix(self.path)
        if self.suffix not in MESSAGE_READERS:
            raise LogError(
                f"{self.path}: unknown log format {self.suffix!r}; "
                f"python-can reads {', '.join(sorted(MESSAGE_READERS))}"
            )
        if not self.path.is_file():
            raise LogError(f"{self.path}: no such file")

    def _open(self) -> Any:
        """The file as the reader will see it (a counting or probing proxy when there is one), opened."""
        if self.suffix in TEXT_SUFFIXES:
            raw = gzip.open(self.path, "rt") if self.compressed else open(self.path, encoding="utf-8",
                                                                          errors="replace")
            return CountingFile(raw, asc=self.suffix == ".asc")
        if self.suffix == ".blf":
            return BinaryProbe(gzip.open(self.path, "rb") if self.compressed else open(self.path, "rb"))
        return gzip.open(self.path, "rb") if self.compressed else str(self.path)

    def __iter__(self) -> Iterator[tuple[str, can.Message]]:
        size = self.path.stat().st_size
        if size == 0:
            self.stats.warning = f"{self.path}: no CAN frames: the file is empty (0 bytes)"
            return
        file: Any = None
        try:
            file = self._open()
            reader = MESSAGE_READERS[self.suffix](file)
        except Exception as exc:
            if isinstance(file, CountingFile):
                file.close_file()
            elif file is not None and not isinstance(file, str):
                file.close()
            if isinstance(exc, (ImportError, NotImplementedError)):  # python-can's MF4Reader without asammdf
                raise LogError(f"{self.path}: reading {self.suffix} needs an optional package: {exc}") from None
            detail = blf_detail(file if isinstance(file, BinaryProbe) else None, None)
            self._fail(f"{self.path}: read 0 frames; the file ended early ({detail})" if detail else
                       f"{self.path}: cannot open log: {type(exc).__name__}: {exc}")
            return
        counting = file if isinstance(file, CountingFile) else None
        probe = file if isinstance(file, BinaryProbe) else None
        self._position = counting or probe
        try:
            yield from self._read(reader, counting, probe, size)
        finally:
            if counting is not None:
                counting.close_file()

    @property
    def position(self) -> int | None:
        """How far into the file reading has got (characters of a text log, bytes of a BLF); None where the
        reader does not say (MF4) or before reading."""
        where = self._position
        if where is None:
            return None
        return where.chars if isinstance(where, CountingFile) else where.position

    @property
    def size(self) -> int | None:
        """The total ``position`` goes to (the file's size), None for a compressed file."""
        return None if self.compressed or self.suffix == ".mf4" else self.path.stat().st_size

    def _read(self, reader: Any, counting: CountingFile | None, probe: BinaryProbe | None,
              size: int) -> Iterator[tuple[str, can.Message]]:
        names: dict[Any, str] = {}
        buses = self.stats.buses
        cut_off = None
        last_damaged = -1
        while True:
            try:
                with reader:
                    for msg in reader:
                        if counting is not None:
                            if counting.cut and self._from_a_cut_line(msg):
                                cut_off = f"line {counting.line} cut off"
                                break
                            if counting.head is not None:
                                counting.first_frame_read()
                        channel = msg.channel
                        bus = names.get(channel)
                        if bus is None:
                            bus = names[channel] = bus_name(channel, self.suffix, self.bus_map)
                        msg.channel = bus
                        self.stats.frames += 1
                        buses[bus] = buses.get(bus, 0) + 1
                        yield bus, msg
            except GeneratorExit:
                raise
            except Exception as exc:
                detail = blf_detail(probe, None)
                if detail:
                    self._fail(f"{self.path}: read {_frames(self.stats.frames)}; the file ended early ({detail})")
                    return
                # A restarted reader that fails again without reading a line fails on the header: stop there.
                if self.skip_damaged and counting is not None and counting.line > last_damaged:
                    last_damaged = counting.line
                    reader = self._resume_after(counting, exc)
                    continue
                where = f"{self.path}:{counting.line}" if counting is not None and counting.line else str(self.path)
                self._fail(
                    f"{where}: log damaged after {self.stats.frames} frames: {type(exc).__name__}: {exc}"
                )
                return
            break
        if cut_off and self.skip_damaged:
            self._count_damage(counting.line, "cut off (the file ends inside it)")
            cut_off = None
        detail = cut_off or asc_detail(counting) or blf_detail(probe, reader)
        if not detail and self.suffix == ".mf4" and not self.compressed:
            detail = mf4_detail(self.path)
        if detail:
            self._fail(f"{self.path}: read {_frames(self.stats.frames)}; the file ended early ({detail})")
        elif self.stats.frames == 0 and not self.stats.damaged:
            self.stats.warning = f"{self.path}: no CAN frames in {size} bytes ({self._what_it_was(counting)})"
        elif self.stats.frames == 0:
            self.stats.warning = f"{self.path}: no CAN frames; every line with content is damaged"

    def _resume_after(self, counting: CountingFile, exc: Exception) -> Any:
        """Count the damaged line and a new reader that reads on after it, shown the header again."""
        why = "cut off (the file ends inside it)" if counting.cut else f"{type(exc).__name__}: {exc}"
        self._count_damage(counting.line, why)
        header = counting.head[:-1] if counting.head is not None else counting.preamble
        if counting.head is not None:  # the damaged line is no part of the header
            counting.head = list(header)
        counting.replay(header)
        return MESSAGE_READERS[self.suffix](counting)

    def _count_damage(self, line: int, why: str) -> None:
        self.stats.damaged += 1
        if len(self.stats.damaged_at) < MAX_DAMAGE_PLACES:
            self.stats.damaged_at.append(f"{self.path}:{line}: {why[:120]}")

    def _from_a_cut_line(self, msg: can.Message) -> bool:
        """A frame parsed from a last line without its newline: candump lines are always whole (a cut one
        reads as a shorter frame); an ASC line says its length, so a cut one has fewer bytes than that."""
        if self.suffix == ".log":
            return True
        if self.suffix == ".asc":
            return not (msg.is_remote_frame or msg.is_error_frame) and len(msg.data) < msg.dlc
        return False

    def _what_it_was(self, counting: CountingFile | None) -> str:
        if self.suffix == ".asc" and counting is not None and counting.open_block is False:
            return "an ASC log without CAN frames"
        if self.suffix == ".blf":
            return "a BLF log without CAN frames"
        return f"not {FORMAT_NAMES.get(self.suffix, 'a ' + self.suffix)} log?"

    def _fail(self, message: str) -> None:
        self.stats.error = message
        if self.strict:
            raise LogError(message)
