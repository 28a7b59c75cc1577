"""candump's text from a stream (standard input): ``candump can0 | vehicle-agent decode - --dbc ...``.

Both of candump's text forms are read, as ``cantools decode`` reads them, by
cantools' own log-line parser (``cantools.logreader``): the log form
(``candump -L``: ``(1700000000.123456) can0 123#11223344``) and the screen
form (``candump can0``: ``  can0  123   [4]  11 22 33 44``, with or without
``-t a|d|z`` times).  The first line that parses fixes the form, as in
cantools.  Screen lines without a time are stamped when they are read (a live
pipe); relative times (``-t d``/``-t z``) count from 0.

Lines that are not candump lines are damaged: skipped and counted (naming the
line), or with ``strict`` the first one ends reading with ``LogError``.
Times are taken from the line's text as python-can reads a candump file
(``float``, so they are the same to the bit), negative ones included (a
logger clock that reset; cantools' patterns have no sign).  The
interface is LogSource's: iterate ``(bus, can.Message)``, then ``stats``.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator
from typing import TextIO

import can
from cantools.logreader import Parser

from agent.sources.log import MAX_DAMAGE_PLACES, LogError, LogStats, bus_name


class CandumpTextSource:
    def __init__(self, stream: TextIO, bus_map: dict[str, str] | None = None, strict: bool = False,
                 name: str = "<stdin>", clock=time.time) -> None:
        self.stream = stream
        self.path = name
        self.bus_map = dict(bus_map or {})
        self.strict = strict
        self.stats = LogStats()
        self.position: int | None = None  # a pipe has no size: progress shows the count and the rate
        self.size: int | None = None
        self._clock = clock

    def __iter__(self) -> Iterator[tuple[str, can.Message]]:
        parser = Parser()
        pattern = None
        names: dict[str, str] = {}
        stats = self.stats
        for number, line in enumerate(self.stream, start=1):
            text = line.strip()
            if not text:
                continue
            negative = text.startswith("(-")
            if negative:
                text = "(" + text[2:]
            frame, stamp, why = None, None, "not a candump line (candump -L or candump's screen form)"
            if pattern is None:
                pattern = parser.detect_pattern(text)
            match = pattern.pattern.match(text) if pattern is not None else None
            if match is not None:
                try:
                    frame = pattern.unpack(match)
                except ValueError as exc:  # a data field of odd length (binascii) and the like
                    why = f"{type(exc).__name__}: {exc}"
                stamp = match.groupdict().get("timestamp")
            if frame is None:
                self._damaged(number, why, line)
                continue
            bus = names.get(frame.channel)
            if bus is None:
                bus = names[frame.channel] = bus_name(frame.channel, ".log", self.bus_map)
            data = frame.data
            seconds = self._seconds(stamp, frame.timestamp)
            msg = can.Message(timestamp=-seconds if negative else seconds, arbitration_id=frame.frame_id,
                              is_extended_id=frame.is_extended_frame, is_remote_frame=frame.is_remote_frame,
                              data=data, dlc=len(data), is_fd=len(data) > 8, channel=bus)
            stats.frames += 1
            stats.buses[bus] = stats.buses.get(bus, 0) + 1
            yield bus, msg
        if stats.frames == 0:
            stats.warning = (f"{self.path}: no CAN frames" + (f"; all {stats.damaged} lines with content are damaged"
                                                              if stats.damaged else " (the input was empty)"))

    def _seconds(self, text: str | None, stamp: object) -> float:
        if text is not None and text[:1].isdigit() and "-" not in text:
            return float(text)  # "(1700000000.123456)": exactly what python-can's candump reader makes of it
        if isinstance(stamp, datetime.datetime):
            return stamp.timestamp()
        if isinstance(stamp, datetime.timedelta):
            return stamp.total_seconds()
        return self._clock()  # candump's screen form without -t: the time it is read

    def _damaged(self, number: int, why: str, line: str) -> None:
        where = f"{self.path}:{number}"
        if self.strict:
            self.stats.error = f"{where}: log damaged after {self.stats.frames} frames: {why}: {line.strip()[:60]!r}"
            raise LogError(self.stats.error)
        self.stats.damaged += 1
        if len(self.stats.damaged_at) < MAX_DAMAGE_PLACES:
            self.stats.damaged_at.append(f"{where}: {why}")
