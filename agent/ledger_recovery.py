"""How the ledger (agent/ledger.py) gets over failed writes, and the small file readers it uses.

* A torn last line (a power cut mid-append) is saved, byte for byte, to a file
  next to the ledger (``save_torn``) before the ledger is cut back to its last
  complete line; the ledger then records the move in a ``ledger_repair`` entry.
* Entries that cannot be written (full disk, I/O error, read-only file system)
  wait in memory, in order and bounded (``DeferredWrites``); when the file is
  writable again a ``ledger_gap`` entry says how long, how many and why, and
  the waiting entries follow it.
* ``read_json``, ``complete_lines``, ``last_complete_line`` and ``shared_lock`` only read: ``verify`` and
  ``anchor`` use them, and they never raise on hostile content (a head nested 100 000 deep is "unreadable").
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections import Counter, deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.ledger_chain import loads_limited, parse_line, sha256_hex
from agent.privacy.durable import fsync_dir

MAX_DEFERRED = 4096  # entries kept in memory while the file cannot be written; beyond it they are counted lost
TAIL_READ_MAX = 16 << 20  # last_complete_line: a last line longer than this is not looked for


def errno_name(exc: OSError) -> str:
    """``ENOSPC``, ``EIO``, ``EROFS``...; the exception's type name when it has no errno."""
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


def save_torn(ledger_path: Path, torn: bytes, stamp: int) -> Path:
    """Write ``torn`` to a new ``<stem>.torn-<stamp>-<n>.bin`` (0600, fsynced, directory synced); an
    incomplete copy is removed again, so the bytes are only taken out of the ledger once safe."""
    for n in range(1000):
        target = ledger_path.with_name(f"{ledger_path.stem}.torn-{stamp}-{n}.bin")
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        try:
            try:
                view = memoryview(torn)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_dir(target.parent)
        except OSError:
            target.unlink(missing_ok=True)
            raise
        return target
    raise OSError(errno.EEXIST, f"{ledger_path}: no free name for the torn bytes")


def created_record(ledger_path: Path, seq: int, when: float, line_hash: str) -> dict[str, Any]:
    """What ``ledger.created`` holds: the SHA-256 (and time) of the ledger's first line."""
    if seq == 1:
        return {"first_line_sha256": line_hash, "first_time": when}
    with ledger_path.open("rb") as handle:  # a ledger older than the marker: its first line as it is now
        line = handle.readline().rstrip(b"\n")
    entry = parse_line(line)
    return {"first_line_sha256": sha256_hex(line), "first_time": None if isinstance(entry, str) else entry.time,
            "marked_at_seq": seq}


def read_json(path: Path) -> dict[str, Any] | None:
    """A small JSON state file: None when missing, ``{}`` when unreadable (edited, nested, not an object)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        value = loads_limited(data[:1 << 16])
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def complete_lines(path: Path) -> int:
    try:
        return sum(1 for line in path.read_bytes().split(b"\n")[:-1] if line.strip())
    except OSError:
        return 0


def last_complete_line(path: Path, limit: int = TAIL_READ_MAX) -> bytes:
    """The file's last newline-terminated line (a torn tail after it is ignored), read from the end."""
    with path.open("rb") as handle:
        position = handle.seek(0, 2)
        buffer = b""
        while position > 0 and len(buffer) < limit:
            step = min(1 << 16, position)
            position -= step
            handle.seek(position)
            buffer = handle.read(step) + buffer
            end = buffer.rfind(b"\n")
            if end < 0:
                continue
            start = buffer.rfind(b"\n", 0, end)
            if start >= 0 or position == 0:
                return buffer[start + 1:end]
    return b""


@contextlib.contextmanager
def shared_lock(path: Path) -> Iterator[None]:
    """The writers' lock, shared, when it can be had without writing anything (verify only reads)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)


class DeferredWrites:
    """Entries waiting to be written, and the episode of failures they belong to.  Not locked: the
    ledger holds its lock around every use."""

    def __init__(self, limit: int = MAX_DEFERRED) -> None:
        self.limit = limit
        self.entries: deque[tuple[str, dict[str, Any], float]] = deque()  # (kind, fields, original time)
        self.lost: Counter[str] = Counter()  # kind -> entries dropped with the queue full
        self.since: float | None = None  # first failure of the current episode
        self.error = ""  # its errno name
        self.gap_written = False  # the current episode's ledger_gap entry is in the file

    @property
    def blocked(self) -> bool:
        return self.since is not None

    def add(self, kind: str, fields: dict[str, Any], when: float) -> None:
        if len(self.entries) >= self.limit:
            self.lost[kind] += 1
        else:
            self.entries.append((kind, dict(fields), when))

    def failed(self, exc: OSError, when: float) -> bool:
        """Note a failed write; True when it starts a new episode (nothing was waiting before)."""
        if self.since is not None and not self.gap_written:
            return False  # the same episode goes on
        starts = self.since is None
        # A failure after this episode's gap entry was written opens a new episode (and a new gap entry).
        self.since, self.error, self.gap_written = when, errno_name(exc), False
        return starts

    def gap_fields(self, now: float) -> dict[str, Any] | None:
        """The ``ledger_gap`` entry still to write for this episode (None once written)."""
        if self.gap_written:
            return None
        fields: dict[str, Any] = {"from": self.since, "to": now, "deferred": len(self.entries),
                                  "lost": sum(self.lost.values()), "error": self.error}
        if self.lost:
            fields["lost_kinds"] = dict(sorted(self.lost.items()))
        return fields

    def gap_done(self) -> None:
        self.gap_written = True
        self.lost.clear()  # counted in the gap entry

    def cleared(self) -> None:
        self.since, self.error, self.gap_written = None, "", False

    def error_code(self) -> int:
        return int(getattr(errno, self.error, errno.EIO))


__all__ = ["MAX_DEFERRED", "DeferredWrites", "complete_lines", "created_record", "errno_name", "last_complete_line",
           "read_json", "save_torn", "shared_lock"]
