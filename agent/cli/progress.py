"""Progress on long commands (replay, decode of a large log, export): total, rate and time left.

Drawn with ``rich`` (the ``tools`` extra) on standard error, and only when
standard error is a terminal: pipes, files and the journal get no bar.  Where
the total is not known up front (a live bus, standard input) the bar shows the
count and the rate.  Without ``rich`` installed the commands run the same,
without a bar.
"""

from __future__ import annotations

import sys
from typing import Protocol, TextIO


class Progress(Protocol):
    def advance(self, n: int = 1, position: int | None = None) -> None: ...

    def close(self) -> None: ...


class NoProgress:
    def advance(self, n: int = 1, position: int | None = None) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RichProgress:
    """One rich bar.  ``advance(n)`` counts items; ``position`` (bytes read, for a file) drives the bar and
    the time left when the total is in bytes."""

    def __init__(self, description: str, total: int | None, unit: str, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._by_position = unit == "bytes"
        self.count = 0
        columns = [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                   TextColumn("{task.fields[count]} {task.fields[unit]}"),
                   TextColumn("{task.fields[rate]}/s"), TimeElapsedColumn(), TextColumn("left"),
                   TimeRemainingColumn()]
        if not self._by_position:
            columns.insert(3, MofNCompleteColumn())
        self._bar = Progress(*columns, console=Console(file=stream), transient=False, refresh_per_second=4)
        self._task = self._bar.add_task(description, total=total, count=0, unit="items" if self._by_position else unit,
                                        rate="-")
        self._bar.start()

    def advance(self, n: int = 1, position: int | None = None) -> None:
        self.count += n
        task = self._bar.tasks[0]
        elapsed = task.elapsed or 0.0
        rate = f"{self.count / elapsed:,.0f}" if elapsed > 0 else "-"
        if self._by_position and position is not None:
            self._bar.update(self._task, completed=position, count=f"{self.count:,}", rate=rate)
        else:
            self._bar.update(self._task, advance=n, count=f"{self.count:,}", rate=rate)

    def close(self) -> None:
        self._bar.stop()

    def __enter__(self) -> RichProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(description: str, total: int | None = None, unit: str = "frames", stream: TextIO | None = None,
             enabled: bool | None = None) -> RichProgress | NoProgress:
    """A bar when ``enabled`` (default: when the stream is a terminal and rich is installed), else nothing."""
    stream = stream if stream is not None else sys.stderr
    if enabled is None:
        enabled = hasattr(stream, "isatty") and stream.isatty()
    if not enabled:
        return NoProgress()
    try:
        return RichProgress(description, total, unit, stream)
    except ImportError:
        return NoProgress()
