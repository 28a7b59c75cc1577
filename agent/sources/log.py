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

from agent.sources.mf4check import mf4_detail

TEXT_SUFFIXES = {".log", ".asc", ".trc", ".csv"}
BLF_HEADER_SIZE = 144  # a writer that never finished its file leaves this (or 0) as the file size
FORMAT_NAMES = {".asc": "an ASC", ".blf": "a BLF", ".log": "a candump", ".trc": "a TRC", ".csv": "a python-can CSV",
                ".mf4": "an MF4"}
# The first channel number each reader reports.
CHANNEL_BASE = {".asc": 0, ".blf": 0, ".trc": 1, ".mf4": 1, ".log": 0, ".csv": 0}


class LogError(ValueError):
    """A log that cannot be read (further); names the file and, if known, the line."""


_BLOCK_LETTERS = ("B", "b", "E", "e")  # the first letters of "Begin Triggerblock" and "End TriggerBlock"
MAX_DAMAGE_PLACES = 10  # damaged lines named one by one in stats.damaged_at; the rest are counted


class _CountingFile:
    """Text file proxy that counts the lines handed to the reader, notices a last line cut off (no
    newline) and, for ASC, whether a "Begin Triggerblock" is still open (no "End TriggerBlock" yet).

    Until the first frame it keeps the lines read (``head``): the header a restarted reader is shown
    again (``replay``) after a damaged line.  ``close`` is left to the owner: readers close their file
    when they stop, and a restarted reader reads on from the same one."""

    def __init__(self, file: Any, asc: bool = False) -> None:
        self._file = file
        self._asc = asc
        self.line = 0
        self.chars = 0
        self.cut = False
        self.open_block: bool | None = None  # None: no trigger block seen
        self.head: list[str] | None = []  # None once the first frame is read
        self.preamble: list[str] = []
        self._replay: list[str] = []

    def __iter__(self) -> Iterator[str]:
        # A generator, not __next__: the readers iterate their file, and resuming a generator costs less than
        # a method call per line.  A restarted reader gets a new one, reading on from the same file.
        while self._replay:
            yield self._replay.pop(0)
        for line in self._file:
            if self.head is not None:
                self.head.append(line)
            self.line += 1
            self.chars += len(line)
            self.cut = line[-1:] != "\n"
            if self._asc and line[:1] in _BLOCK_LETTERS:
                self._trigger_block(line)
            yield line

    def replay(self, lines: list[str]) -> None:
        self._replay = list(lines)

    def first_frame_read(self) -> None:
        """The lines before the one the first frame came from are the header."""
        if self.head is not None:
            self.head = self.head[:-1]
            self.preamble, self.head = self.head, None

    def close(self) -> None:
        pass

    def close_file(self) -> None:
        self._file.close()

    def _saw(self, line: str) -> str:
        if self.head is not None:
            self.head.append(line)
        self.line += 1
        self.chars += len(line)
        self.cut = not line.endswith("\n")
        if self._asc and line[:1] in ("B", "b", "E", "e"):
            self._trigger_block(line)
        return line

    def _trigger_block(self, line: str) -> None:
        words = line.strip().lower()
        if words.startswith("begin triggerblock"):
            self.open_block = True
        elif words == "end triggerblock":
            self.open_block = False

    def __next__(self) -> str:
        if self._replay:
            return self._replay.pop(0)
        return self._saw(next(self._file))

    def readline(self, *args: Any) -> str:
        if self._replay:
            return self._replay.pop(0)
        line = self._file.readline(*args)
        return self._saw(line) if line else line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


class _BinaryProbe:
    """Binary file proxy for the BLF reader: where it is, and where a read came back short (the reader
    takes a short object for a whole one).  Reads of at most 3 bytes are padding, and an empty read of
    an object header is the normal end of the file."""

    def __init__(self, file: Any) -> None:
        self._file = file
        self.position = 0
        self.object_at = 0  # where the last object header started
        self.short_at: int | None = None  # where the object cut off by the end of the file started

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        if size == 16 and data[:4] == b"LOBJ":
            self.object_at = self.position
        if self.short_at is None and size > 3 and len(data) < size and not (size == 16 and not data):
            self.short_at = self.object_at if size != 16 else self.position
        self.position += len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def _frames(count: int) -> str:
    return f"{count} frame" + ("" if count == 1 else "s")


def _asc_detail(counting: _CountingFile | None) -> str | None:
    if counting is None or not counting.open_block:
        return None
    cut = f"; line {counting.line} cut off" if counting.cut else ""
    return f"no 'End TriggerBlock' after line {counting.line}{cut}"


def _blf_detail(probe: _BinaryProbe | None, reader: Any) -> str | None:
    """Where a BLF file ended early: a short read, or fewer bytes than its header says it has."""
    if probe is None:
        return None
    if probe.short_at == 0:
        return f"the BLF file header is cut off at byte {probe.position}"
    if probe.short_at is not None:
        return f"truncated BLF object at byte {probe.short_at}; the file ends at byte {probe.position}"
    declared = getattr(reader, "file_size", 0) or 0
    if declared > probe.position and declared > BLF_HEADER_SIZE:
        return f"its header says {declared} bytes, the file ends at byte {probe.position}"
    return None


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
            return _CountingFile(raw, asc=self.suffix == ".asc")
        if self.suffix == ".blf":
            return _BinaryProbe(gzip.open(self.path, "rb") if self.compressed else open(self.path, "rb"))
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
            if isinstance(file, _CountingFile):
                file.close_file()
            elif file is not None and not isinstance(file, str):
                file.close()
            if isinstance(exc, (ImportError, NotImplementedError)):  # python-can's MF4Reader without asammdf
                raise LogError(f"{self.path}: reading {self.suffix} needs an optional package: {exc}") from None
            detail = _blf_detail(file if isinstance(file, _BinaryProbe) else None, None)
            self._fail(f"{self.path}: read 0 frames; the file ended early ({detail})" if detail else
                       f"{self.path}: cannot open log: {type(exc).__name__}: {exc}")
            return
        counting = file if isinstance(file, _CountingFile) else None
        probe = file if isinstance(file, _BinaryProbe) else None
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
        return where.chars if isinstance(where, _CountingFile) else where.position

    @property
    def size(self) -> int | None:
        """The total ``position`` goes to (the file's size), None for a compressed file."""
        return None if self.compressed or self.suffix == ".mf4" else self.path.stat().st_size

    def _read(self, reader: Any, counting: _CountingFile | None, probe: _BinaryProbe | None,
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
                detail = _blf_detail(probe, None)
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
        detail = cut_off or _asc_detail(counting) or _blf_detail(probe, reader)
        if not detail and self.suffix == ".mf4" and not self.compressed:
            detail = mf4_detail(self.path)
        if detail:
            self._fail(f"{self.path}: read {_frames(self.stats.frames)}; the file ended early ({detail})")
        elif self.stats.frames == 0 and not self.stats.damaged:
            self.stats.warning = f"{self.path}: no CAN frames in {size} bytes ({self._what_it_was(counting)})"
        elif self.stats.frames == 0:
            self.stats.warning = f"{self.path}: no CAN frames; every line with content is damaged"

    def _resume_after(self, counting: _CountingFile, exc: Exception) -> Any:
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

    def _what_it_was(self, counting: _CountingFile | None) -> str:
        if self.suffix == ".asc" and counting is not None and counting.open_block is False:
            return "an ASC log without CAN frames"
        if self.suffix == ".blf":
            return "a BLF log without CAN frames"
        return f"not {FORMAT_NAMES.get(self.suffix, 'a ' + self.suffix)} log?"

    def _fail(self, message: str) -> None:
        self.stats.error = message
        if self.strict:
            raise LogError(message)
