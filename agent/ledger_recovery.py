"""How the ledger (agent/ledger.py) gets over failed writes.

* A torn last line (a power cut mid-append) is saved, byte for byte, to a file
  next to the ledger (``save_torn``) before the ledger is cut back to its last
  complete line; the ledger then records the move in a ``ledger_repair`` entry.
* Entries that cannot be written (full disk, I/O error, read-only file system)
  wait in memory, in order and bounded (``DeferredWrites``); when the file is
  writable again a ``ledger_gap`` entry says how long, how many and why, and
  the waiting entries follow it.
"""

from __future__ import annotations

import errno
import os
from collections import Counter, deque
from pathlib import Path
from typing import Any

from agent.privacy.durable import fsync_dir

MAX_DEFERRED = 4096  # entries kept in memory while the file cannot be written; beyond it they are counted lost


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


__all__ = ["MAX_DEFERRED", "DeferredWrites", "errno_name", "save_torn"]
