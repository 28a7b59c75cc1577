"""The ledger - "what left my car": an append-only, hash-chained log on the vehicle.

One JSON line per entry::

    {"seq": 7, "time": 1718000000.5, "kind": "upload", "fields": {...},
     "prev": "<sha256 of line 6's bytes>", "hash": "<sha256 of this entry without 'hash'>"}

Kinds: ``consent_change``, ``upload`` (category, signal count, time range, transform level, bytes, payload
hash, broker host), ``purge``, ``may_have_left`` (batches purged while handed to MQTT without an
acknowledgement), ``remote_refused`` (a network attempt to widen consent), ``export``, ``ledger_repair`` (a torn
last line moved aside) and ``ledger_gap`` (entries that could not be written at once).  Entries carry counts,
hashes and names only, never a signal value, a position or the VIN: ``append`` refuses fields whose name or
value looks like one (``check_fields`` in agent/ledger_chain.py).

``verify()`` re-checks every hash, sequence number and link and names the first
bad line: an edited byte, a deleted line or two swapped lines are all found.  A
small head file (``ledger.head``: last seq and its line hash) also catches
lines cut off the end.  Once the ledger has had an entry, its absence is damage
too: ``ledger.created`` (written once, with the hash of the first line) and the
consent file (every consent change is recorded here) say the ledger existed, so
a missing head, a missing ledger or a ledger started afresh is reported.  The
chain proves the file was not changed after the fact by accident or by a
careless edit; someone able to rewrite every file of the state directory
consistently could forge a new chain, which is why the head also leaves the car
(``anchor()``: in the status message, in every export) and ``compare_anchor``
(agent/ledger_chain.py) checks the ledger against such a copy.

A power cut mid-append leaves a partial last line.  It is never kept nor dropped
in silence: the next append (or ``repair()``, run by ``Ledger.in_dir``) moves the
bytes to ``ledger.torn-<time>-<n>.bin``, cuts the file back to its last complete
line and writes a ``ledger_repair`` entry saying so; the chain goes on from there.
A full disk, an I/O error or a read-only file system does not make ``append``
raise: the entry waits in memory (``blocked``) and ``flush_deferred()`` writes a
``ledger_gap`` entry, then the waiting entries in order, once the file is writable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.ledger_chain import (
    FORBIDDEN_FIELDS,
    GENESIS,
    LedgerEntry,
    StateNames,
    VerifyResult,
    canonical,
    check_fields,
    loads_limited,
    parse_line,
    sha256_hex,
    verify_bytes,
    verify_state,
)
from agent.ledger_records import LedgerRecords
from agent.ledger_recovery import (
    MAX_DEFERRED,
    DeferredWrites,
    complete_lines,
    created_record,
    last_complete_line,
    read_json,
    save_torn,
    shared_lock,
)
from agent.privacy import durable
from agent.privacy.durable import ensure_private_dir, file_lock, truncate_synced

log = logging.getLogger(__name__)

LEDGER_FILE = "ledger.jsonl"
KINDS = ("consent_change", "upload", "purge", "may_have_left", "remote_refused", "export", "ledger_repair",
         "ledger_gap", "forget_me")
RETRY_INTERVAL_S = 1.0  # an append while blocked tries to flush at most this often
CONSENT_FILE = "consent.jsonl"  # agent.privacy.store.STATE_FILE: every change in it is also a ledger entry


class Ledger(LedgerRecords):
    """Thread-safe (one lock per instance) and process-safe (a lock file).  ``monotonic`` paces the
    flush attempts of appends made while blocked; ``max_deferred`` bounds the entries kept meanwhile."""

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time, *,
                 monotonic: Callable[[], float] = time.monotonic, max_deferred: int = MAX_DEFERRED) -> None:
        self.path = Path(path)
        self.head_path = self.path.with_suffix(".head")
        self.created_path = self.path.with_suffix(".created")  # written once, at the first entry
        self.consent_path = self.path.with_name(CONSENT_FILE)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.clock = clock
        self.monotonic = monotonic
        self._tail: tuple[int, int, str] | None = None  # (file size, last seq, sha256 of last line)
        self._lock = threading.Lock()
        self._waiting = DeferredWrites(max_deferred)
        self._last_try = float("-inf")
        self._last_problem = ""  # said once, not at every flush attempt
        self._created = False  # ledger.created is known to exist

    @classmethod
    def in_dir(cls, state_dir: str | Path, clock: Callable[[], float] = time.time, *, repair: bool = True,
               **options: Any) -> Ledger:
        """The ledger of a state directory; a torn last line is repaired now (best effort: when it cannot be,
        the next append tries again)."""
        ledger = cls(Path(state_dir) / LEDGER_FILE, clock, **options)
        if repair and ledger.path.exists():
            try:
                ledger.repair()
            except (OSError, ValueError) as exc:
                log.warning("%s: cannot check or repair the ledger now: %s", ledger.path, exc)
        return ledger

    # -- state ----------------------------------------------------------------------
    @property
    def blocked(self) -> bool:
        """True while entries wait in memory (or were lost) because the file could not be written."""
        return self._waiting.blocked

    @property
    def deferred(self) -> int:
        """How many entries wait in memory."""
        return len(self._waiting.entries)

    @property
    def lost(self) -> int:
        """How many entries were dropped (the waiting queue was full) and are not yet in a gap entry."""
        return sum(self._waiting.lost.values())

    # -- writing -------------------------------------------------------------------
    def append(self, kind: str, fields: dict[str, Any], *, defer: bool = True) -> LedgerEntry | None:
        """Write one entry (durable when this returns it).  An unknown kind or a personal-looking field
        raises ValueError.  With ``defer`` (the default) an OSError does not raise: the entry waits in
        memory, behind any already waiting, and None is returned; ``defer=False`` raises it."""
        if kind not in KINDS:
            raise ValueError(f"ledger: unknown entry kind {kind!r} (known: {', '.join(KINDS)})")
        check_fields(fields)
        when = round(self.clock(), 6)
        with self._lock:
            if self.blocked:
                if not defer or self.monotonic() - self._last_try >= RETRY_INTERVAL_S:
                    self._flush_locked()
                if self.blocked:
                    if not defer:
                        raise OSError(self._waiting.error_code(),
                                      f"{self.path}: the ledger cannot be written now ({self._waiting.error})")
                    self._waiting.add(kind, fields, when)
                    return None
            try:
                return self._write_locked(kind, fields)
            except OSError as exc:
                if not defer:
                    raise
                self._failed(exc, when)
                self._waiting.add(kind, fields, when)
                return None

    def flush_deferred(self) -> bool:
        """Write what waits in memory, after a ``ledger_gap`` entry; True when nothing waits any more.
        Cheap when nothing waits: call it periodically."""
        with self._lock:
            return self._flush_locked()

    def repair(self) -> LedgerEntry | None:
        """Move a torn last line aside and record it (``ledger_repair``); None when there was none.
        Raises OSError when the file cannot be written (when only the entry could not be, it waits first
        among the deferred ones), ValueError when the line before the torn one is not an entry (an edit:
        ``verify`` reports it, nothing is changed).  The first append does the same on its own."""
        if not self._torn():
            return None  # the common case, without writing anything (not even the lock file)
        with self._lock:
            ensure_private_dir(self.path.parent)
            with file_lock(self.lock_path):
                self._tail = None
                return self._read_tail()[1]

    def _torn(self) -> bool:
        try:
            with self.path.open("rb") as handle:
                if handle.seek(0, 2) == 0:
                    return False
                handle.seek(-1, 2)
                return handle.read(1) != b"\n"
        except FileNotFoundError:
            return False

    # -- internals (self._lock held) ----------------------------------------------------
    def _failed(self, exc: OSError, when: float) -> None:
        self._last_try = self.monotonic()
        if self._waiting.failed(exc, when):
            log.warning("%s: cannot write the ledger (%s): keeping up to %d entries in memory until it can be",
                        self.path, exc, self._waiting.limit)

    def _flush_locked(self) -> bool:
        waiting = self._waiting
        if not waiting.blocked:
            return True
        self._last_try = self.monotonic()
        written = 0
        try:
            gap = waiting.gap_fields(round(self.clock(), 6))
            if gap is not None:
                self._write_locked("ledger_gap", gap)
                waiting.gap_done()
            while waiting.entries:
                kind, fields, when = waiting.entries[0]
                self._write_locked(kind, {**fields, "deferred_at": when})
                waiting.entries.popleft()
                written += 1
        except OSError as exc:
            self._failed(exc, round(self.clock(), 6))
            return False
        except ValueError as exc:  # the last line was edited meanwhile: keep waiting (verify says where)
            if str(exc) != self._last_problem:
                log.warning("%s: cannot write the deferred ledger entries: %s", self.path, exc)
            self._last_problem = str(exc)
            return False
        log.info("%s: the ledger is writable again: %d deferred entries written after a gap entry", self.path,
                 written)
        waiting.cleared()
        self._last_problem = ""
        return True

    def _write_locked(self, kind: str, fields: dict[str, Any]) -> LedgerEntry:
        ensure_private_dir(self.path.parent)
        with file_lock(self.lock_path):
            return self._emit(kind, fields)

    def _emit(self, kind: str, fields: dict[str, Any], tail: tuple[int, int, str] | None = None) -> LedgerEntry:
        size, seq, prev = tail if tail is not None else self._read_tail()[0]
        entry = LedgerEntry(seq + 1, round(self.clock(), 6), kind, fields, prev, "")
        entry = LedgerEntry(entry.seq, entry.time, kind, fields, prev, sha256_hex(canonical(entry.content())))
        line = canonical(entry.to_json())
        try:
            durable.append_synced(self.path, line + b"\n")
        except OSError:
            self._undo_partial(size)
            raise
        line_hash = sha256_hex(line)
        self._tail = (size + len(line) + 1, entry.seq, line_hash)
        try:
            durable.write_replace(self.head_path, canonical({"seq": entry.seq, "line_sha256": line_hash}) + b"\n")
        except OSError as exc:  # the line is written; a head behind the file still verifies, the next append fixes it
            log.warning("%s: entry %d written but the head file could not be updated: %s", self.path, entry.seq, exc)
        if not self._created:
            self._mark_created(entry.seq, entry.time, line_hash)
        return entry

    def _mark_created(self, seq: int, when: float, line_hash: str) -> None:
        """``ledger.created``, once: from now on the ledger is known to exist, and which line it started with."""
        try:
            if not self.created_path.exists():
                record = created_record(self.path, seq, when, line_hash)
                durable.write_replace(self.created_path, canonical(record) + b"\n")
            self._created = True
        except OSError as exc:  # tried again at the next append
            log.warning("%s: cannot write %s: %s", self.path, self.created_path.name, exc)

    def _undo_partial(self, size: int) -> None:
        """An append that failed may have left part of its line: cut it (the entry itself is kept to retry)."""
        self._tail = None
        try:
            if self.path.stat().st_size > size:
                truncate_synced(self.path, size)
        except OSError:
            pass  # left as a torn line: repaired (moved aside and recorded) by the next write

    def _read_tail(self) -> tuple[tuple[int, int, str], LedgerEntry | None]:
        """(file size, last seq, last line hash), repairing a torn last line first (then also its entry)."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return (0, 0, GENESIS), None
        if self._tail is not None and self._tail[0] == size:
            return self._tail, None
        data = self.path.read_bytes()  # someone else appended (or first use): find the last line
        cut = data.rfind(b"\n") + 1
        last = data[:cut].rstrip(b"\n").rsplit(b"\n", 1)[-1]
        seq, last_hash = 0, GENESIS
        if last:
            try:
                seq, last_hash = int(loads_limited(last)["seq"]), sha256_hex(last)
            except (ValueError, KeyError, TypeError, OverflowError):
                raise ValueError(f"{self.path}: the last line is not a ledger entry; run `vehicle-agent ledger "
                                 "verify`") from None
        self._tail = (cut, seq, last_hash)
        if cut == len(data):
            return self._tail, None
        repaired = self._repair_torn(data[cut:], cut, seq)
        return self._tail, repaired

    def _repair_torn(self, torn: bytes, cut: int, seq: int) -> LedgerEntry:
        moved_to = save_torn(self.path, torn, int(self.clock()))
        truncate_synced(self.path, cut)
        fields: dict[str, Any] = {"moved_bytes": len(torn), "moved_to": moved_to.name, "after_seq": seq}
        head = self.head()
        if head is not None and isinstance(head.get("seq"), int) and head["seq"] > seq:
            fields["head_seq"] = head["seq"]  # the head counted an entry that is not in the file any more
        log.warning("%s: the last line was incomplete (%d bytes, a write cut off): moved to %s, the ledger goes on "
                    "after seq %d", self.path, len(torn), moved_to, seq)
        try:
            return self._emit("ledger_repair", fields, self._tail)
        except OSError as exc:  # the bytes are moved: the entry saying so must not be lost, it goes first
            when = round(self.clock(), 6)
            self._waiting.entries.appendleft(("ledger_repair", fields, when))
            self._failed(exc, when)
            raise

    # -- reading -------------------------------------------------------------------
    def entries(self, since: float | None = None) -> list[LedgerEntry]:
        """Every readable entry (unreadable lines are skipped: ``verify`` reports them)."""
        out = []
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        for line in data.split(b"\n"):
            if not line:
                continue
            entry = parse_line(line)
            if isinstance(entry, str):
                continue
            if since is None or entry.time >= since:
                out.append(entry)
        return out

    def head(self) -> dict[str, Any] | None:
        head = read_json(self.head_path)
        return head if head != {} else {"seq": -1, "line_sha256": ""}

    def anchor(self) -> dict[str, Any] | None:
        """``{"seq", "line_sha256"}`` of the last complete entry (what the status message carries, to be kept
        outside the car); None for an empty ledger or when its last line is not an entry.  Only reads."""
        tail = self._tail
        try:
            size = self.path.stat().st_size
            if tail is not None and tail[0] == size:
                return {"seq": tail[1], "line_sha256": tail[2]} if tail[1] else None
            last = last_complete_line(self.path)
        except FileNotFoundError:
            return None
        entry = parse_line(last) if last else "empty"
        return None if isinstance(entry, str) else {"seq": entry.seq, "line_sha256": sha256_hex(last)}

    def verify(self) -> VerifyResult:
        """The chain, the head, and that the ledger is all there (see the module docstring)."""
        with shared_lock(self.lock_path):
            try:
                data: bytes | None = self.path.read_bytes()
            except FileNotFoundError:
                data = None
            head, created = self.head(), read_json(self.created_path)
        return verify_state(data, head, created, complete_lines(self.consent_path),
                            StateNames(self.head_path.name, self.created_path.name, self.consent_path.name))


__all__ = ["FORBIDDEN_FIELDS", "GENESIS", "KINDS", "LEDGER_FILE", "Ledger", "LedgerEntry", "VerifyResult",
           "verify_bytes"]
