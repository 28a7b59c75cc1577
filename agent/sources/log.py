"""Log source: frames from recorded CAN logs through python-can's readers.

python-can reads every format (candump .log, .asc, .blf, .trc, .csv, .mf4 with
asammdf, and their .gz forms).  This module adds what an engineer needs on top:
each frame gets a bus name, a damaged file keeps the frames read before the
damage, and the error names the file and (for text formats) the line.

Channel -> bus naming when no mapping is given: candump keeps its names
(``can0``, ``pcan``); numbered channels are normalised to ``can<N>`` counting
from 0 (ASC and BLF already count from 0, TRC counts from 1); CSV has no
channel and becomes ``can0``.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import can
from can.io.player import MESSAGE_READERS

TEXT_SUFFIXES = {".log", ".asc", ".trc", ".csv"}
# The first channel number each reader reports.
CHANNEL_BASE = {".asc": 0, ".blf": 0, ".trc": 1, ".mf4": 0, ".log": 0, ".csv": 0}


class LogError(ValueError):
    """A log that cannot be read (further); names the file and, if known, the line."""


class _CountingFile:
    """Text file proxy that counts the lines handed to the reader."""

    def __init__(self, file: Any) -> None:
        self._file = file
        self.line = 0

    def __iter__(self) -> _CountingFile:
        return self

    def __next__(self) -> str:
        line = next(self._file)
        self.line += 1
        return line

    def readline(self, *args: Any) -> str:
        line = self._file.readline(*args)
        if line:
            self.line += 1
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def log_suffix(path: Path) -> tuple[str, bool]:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        if len(suffixes) < 2:
            raise LogError(f"{path}: compressed log without a format suffix")
        return suffixes[-2], True
    if not suffixes:
        raise LogError(f"{path}: no file suffix; expected one of {', '.join(sorted(MESSAGE_READERS))}")
    return suffixes[-1], False


def _bus_name(channel: Any, suffix: str, bus_map: dict[str, str]) -> str:
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
    buses: dict[str, int] = field(default_factory=dict)


class LogSource:
    """Iterates ``(bus, can.Message)`` over a log file.

    ``bus_map`` maps a log channel (as the reader reports it, or normalised
    ``canN``, or ``*`` for all) to a bus name.  With ``strict`` a damaged file
    raises ``LogError`` after yielding every frame read before the damage;
    otherwise the error is kept in ``stats.error`` and iteration just ends.
    """

    def __init__(self, path: str | Path, bus_map: dict[str, str] | None = None, strict: bool = True) -> None:
        self.path = Path(path)
        self.bus_map = dict(bus_map or {})
        self.strict = strict
        self.stats = LogStats()
        self.suffix, self.compressed = log_suffix(self.path)
        if self.suffix not in MESSAGE_READERS:
            raise LogError(
                f"{self.path}: unknown log format {self.suffix!r}; "
                f"python-can reads {', '.join(sorted(MESSAGE_READERS))}"
            )
        if not self.path.is_file():
            raise LogError(f"{self.path}: no such file")

    def _open(self) -> tuple[Any, _CountingFile | None]:
        reader_type = MESSAGE_READERS[self.suffix]
        if self.suffix in TEXT_SUFFIXES:
            raw = gzip.open(self.path, "rt") if self.compressed else open(self.path, encoding="utf-8",
                                                                          errors="replace")
            counting = _CountingFile(raw)
            return reader_type(counting), counting
        if self.compressed:
            return reader_type(gzip.open(self.path, "rb")), None
        return reader_type(str(self.path)), None

    def __iter__(self) -> Iterator[tuple[str, can.Message]]:
        try:
            reader, counting = self._open()
        except ImportError as exc:
            raise LogError(f"{self.path}: reading {self.suffix} needs an optional package: {exc}") from None
        except Exception as exc:
            self._fail(f"{self.path}: cannot open log: {type(exc).__name__}: {exc}")
            return
        names: dict[Any, str] = {}
        buses = self.stats.buses
        try:
            with reader:
                for msg in reader:
                    channel = msg.channel
                    bus = names.get(channel)
                    if bus is None:
                        bus = names[channel] = _bus_name(channel, self.suffix, self.bus_map)
                    msg.channel = bus
                    self.stats.frames += 1
                    buses[bus] = buses.get(bus, 0) + 1
                    yield bus, msg
        except GeneratorExit:
            raise
        except Exception as exc:
            where = f"{self.path}:{counting.line}" if counting is not None and counting.line else str(self.path)
            self._fail(
                f"{where}: log damaged after {self.stats.frames} frames: {type(exc).__name__}: {exc}"
            )

    def _fail(self, message: str) -> None:
        self.stats.error = message
        if self.strict:
            raise LogError(message)
