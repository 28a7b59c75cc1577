"""Where in a log file python-can's reader is, for the errors ``agent.sources.log`` gives.

python-can's readers say nothing of lines or bytes, and some stop silently where a file ends early: the text
reader's file goes through ``CountingFile`` (lines handed out, a last line cut off, an ASC trigger block
still open), a binary reader's through ``BinaryProbe`` (how far it got, a short read); ``asc_detail`` and
``blf_detail`` say in words how such a file ended.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

BLF_HEADER_SIZE = 144  # a writer that never finished its file leaves this (or 0) as the file size
_BLOCK_LETTERS = ("B", "b", "E", "e")  # the first letters of "Begin Triggerblock" and "End TriggerBlock"


class CountingFile:
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


class BinaryProbe:
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


def asc_detail(counting: CountingFile | None) -> str | None:
    if counting is None or not counting.open_block:
        return None
    cut = f"; line {counting.line} cut off" if counting.cut else ""
    return f"no 'End TriggerBlock' after line {counting.line}{cut}"


def blf_detail(probe: BinaryProbe | None, reader: Any) -> str | None:
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


__all__ = ["BLF_HEADER_SIZE", "BinaryProbe", "CountingFile", "asc_detail", "blf_detail"]
