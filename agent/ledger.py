"""The ledger - "what left my car": an append-only, hash-chained log on the vehicle.

One JSON line per entry::

    {"seq": 7, "time": 1718000000.5, "kind": "upload", "fields": {...},
     "prev": "<sha256 of line 6's bytes>", "hash": "<sha256 of this entry without 'hash'>"}

Kinds: ``consent_change``, ``upload`` (category, signal count, time range,
transform level, bytes, payload hash, broker host), ``purge``,
``may_have_left`` (batches purged while handed to MQTT without an
acknowledgement), ``remote_refused`` (a network attempt to widen consent),
``export``.  Entries carry counts, hashes and names only, never a signal value,
a position or the VIN: ``append`` refuses fields that look like personal values.

``verify()`` re-checks every hash, sequence number and link and names the first
bad line: an edited byte, a deleted line or two swapped lines are all found.  A
small head file (``ledger.head``: last seq and its line hash) also catches
lines cut off the end.  The chain proves the file was not changed after the
fact by accident or by a careless edit; someone able to rewrite the whole file
and the head could forge a new chain, which is why exports carry the head hash.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.privacy.durable import append_synced, ensure_private_dir, file_lock, write_replace

LEDGER_FILE = "ledger.jsonl"
GENESIS = "0" * 64
KINDS = ("consent_change", "upload", "purge", "may_have_left", "remote_refused", "export")
# Field names that would mean a raw personal value is being written.
FORBIDDEN_FIELDS = frozenset({"latitude", "longitude", "lat", "lon", "position", "vin", "values", "value",
                              "payload", "altitude"})


def _canonical(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sorted_ids(ids: Iterable[int | str]) -> list[int | str]:
    items = list(ids)
    return sorted(items) if all(isinstance(i, int) for i in items) else sorted(items, key=str)


def _check_fields(fields: Any, path: str = "fields") -> None:
    if isinstance(fields, dict):
        for key, value in fields.items():
            if str(key).lower() in FORBIDDEN_FIELDS:
                raise ValueError(f"ledger: {path}.{key} looks like a personal value; the ledger never stores them")
            _check_fields(value, f"{path}.{key}")
    elif isinstance(fields, (list, tuple)):
        for index, item in enumerate(fields):
            _check_fields(item, f"{path}[{index}]")
    elif not (fields is None or isinstance(fields, (str, int, float, bool))):
        raise ValueError(f"ledger: {path} must be plain JSON data, got {type(fields).__name__}")


@dataclass(frozen=True)
class LedgerEntry:
    seq: int
    time: float
    kind: str
    fields: dict[str, Any]
    prev: str
    hash: str

    def content(self) -> dict[str, Any]:
        return {"seq": self.seq, "time": self.time, "kind": self.kind, "fields": self.fields, "prev": self.prev}

    def to_json(self) -> dict[str, Any]:
        return {**self.content(), "hash": self.hash}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LedgerEntry:
        return cls(int(data["seq"]), float(data["time"]), str(data["kind"]), dict(data["fields"]), str(data["prev"]),
                   str(data["hash"]))


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int  # lines checked
    line: int | None = None  # first bad line (1-based)
    seq: int | None = None
    problem: str | None = None

    def __str__(self) -> str:
        if self.ok:
            return f"ledger intact: {self.entries} entries, hash chain and sequence verified"
        where = f"line {self.line}" if self.line else "end of file"
        return f"ledger damaged at {where}: {self.problem}"


class Ledger:
    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.head_path = self.path.with_suffix(".head")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.clock = clock
        self._tail: tuple[int, int, str] | None = None  # (file size, last seq, sha256 of last line)

    @classmethod
    def in_dir(cls, state_dir: str | Path, clock: Callable[[], float] = time.time) -> Ledger:
        return cls(Path(state_dir) / LEDGER_FILE, clock)

    # -- writing -------------------------------------------------------------------
    def append(self, kind: str, fields: dict[str, Any]) -> LedgerEntry:
        if kind not in KINDS:
            raise ValueError(f"ledger: unknown entry kind {kind!r} (known: {', '.join(KINDS)})")
        _check_fields(fields)
        ensure_private_dir(self.path.parent)
        with file_lock(self.lock_path):
            size, seq, prev = self._read_tail()
            entry = LedgerEntry(seq + 1, round(self.clock(), 6), kind, fields, prev, "")
            entry = LedgerEntry(entry.seq, entry.time, kind, fields, prev, _sha256(_canonical(entry.content())))
            line = _canonical(entry.to_json())
            append_synced(self.path, line + b"\n")
            line_hash = _sha256(line)
            self._tail = (size + len(line) + 1, entry.seq, line_hash)
            write_replace(self.head_path, _canonical({"seq": entry.seq, "line_sha256": line_hash}) + b"\n")
        return entry

    def _read_tail(self) -> tuple[int, int, str]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return 0, 0, GENESIS
        if self._tail is not None and self._tail[0] == size:
            return self._tail
        data = self.path.read_bytes()  # someone else appended (or first use): find the last line
        lines = data.rstrip(b"\n").split(b"\n")
        last = lines[-1] if lines and lines[-1] else b""
        if not last:
            return size, 0, GENESIS
        if not data.endswith(b"\n"):
            raise ValueError(f"{self.path}: the last line is incomplete; run `vehicle-agent ledger verify`")
        try:
            seq = int(json.loads(last)["seq"])
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{self.path}: the last line is not a ledger entry; run `vehicle-agent ledger verify`") \
                from None
        self._tail = (size, seq, _sha256(last))
        return self._tail

    # Typed helpers, so callers cannot put a raw value in by accident.
    def record_consent_change(self, change: Any) -> LedgerEntry:
        detail = {k: v for k, v in change.detail.items() if k in ("expiry", "expires_at", "level", "was", "purpose",
                                                                  "zone", "radius_m", "ended", "revoked",
                                                                  "location_off_at_ignition", "from_version")}
        return self.append("consent_change", {"version": change.version, "change": change.kind,
                                              "source": change.source, "category": change.category,
                                              "detail": detail, "purge": sorted(change.purge)})

    def record_upload(self, batch_id: int | str, payload: bytes, categories: Collection[str], signal_count: int,
                      time_range: tuple[float, float], level: str | None, broker: str, consent_version: int,
                      stream: str = "", bench: bool = False) -> LedgerEntry:
        return self.append("upload", {"batch": batch_id, "stream": stream, "categories": sorted(categories),
                                      "signals": signal_count, "first": time_range[0], "last": time_range[1],
                                      "level": level, "bytes": len(payload), "sha256": _sha256(payload),
                                      "broker": broker, "consent_version": consent_version, "bench": bench})

    def record_purge(self, categories: Collection[str], batch_ids: Iterable[int | str], reason: str,
                     consent_version: int | None = None, nbytes: int | None = None) -> LedgerEntry:
        ids = _sorted_ids(batch_ids)
        return self.append("purge", {"categories": sorted(categories), "batches": len(ids), "batch_ids": ids,
                                     "reason": reason, "consent_version": consent_version, "bytes": nbytes})

    def record_may_have_left(self, batch_ids: Iterable[int | str], categories: Collection[str],
                             reason: str) -> LedgerEntry:
        ids = _sorted_ids(batch_ids)
        return self.append("may_have_left", {"batch_ids": ids, "batches": len(ids),
                                             "categories": sorted(categories), "reason": reason})

    def record_remote_refused(self, action: str, category: str | None, reason: str) -> LedgerEntry:
        return self.append("remote_refused", {"action": action[:40], "category": category, "reason": reason})

    def record_export(self, **fields: Any) -> LedgerEntry:
        return self.append("export", fields)

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
            try:
                entry = LedgerEntry.from_json(json.loads(line))
            except (ValueError, KeyError, TypeError):
                continue
            if since is None or entry.time >= since:
                out.append(entry)
        return out

    def head(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.head_path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:
            return {"seq": -1, "line_sha256": ""}

    def verify(self) -> VerifyResult:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            head = self.head()
            if head and head.get("seq"):
                return VerifyResult(False, 0, None, None, f"the ledger file is missing but {head['seq']} entries "
                                                          "were written")
            return VerifyResult(True, 0)
        return verify_bytes(data, self.head())


def _parse(line: bytes) -> LedgerEntry | None:
    try:
        entry = LedgerEntry.from_json(json.loads(line))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return entry


def verify_bytes(data: bytes, head: dict[str, Any] | None = None) -> VerifyResult:
    """Check a ledger's bytes (and its head record): the first problem found, with its line."""
    if data and not data.endswith(b"\n"):
        count = data.count(b"\n") + 1
        return VerifyResult(False, count - 1, count, None, "the last line is incomplete (cut off or edited)")
    lines = data.split(b"\n")[:-1] if data else []
    entries = [_parse(line) for line in lines]
    prev_hash, expected = GENESIS, 1
    for number, (line, entry) in enumerate(zip(lines, entries), 1):
        if entry is None:
            return VerifyResult(False, number - 1, number, None, "not a valid ledger entry (edited)")
        if _sha256(_canonical(entry.content())) != entry.hash:
            return VerifyResult(False, number - 1, number, entry.seq,
                                f"entry seq {entry.seq} does not match its own hash (edited)")
        if entry.seq != expected:
            later = {e.seq for e in entries[number:] if e is not None}
            if entry.seq < expected or expected in later:
                problem = f"entry seq {entry.seq} where seq {expected} was expected (lines reordered)"
            else:
                missing = f"seq {expected}" if entry.seq == expected + 1 else f"seq {expected}..{entry.seq - 1}"
                problem = f"{missing} missing before this line (deleted)"
            return VerifyResult(False, number - 1, number, entry.seq, problem)
        if entry.prev != prev_hash:
            return VerifyResult(False, number - 1, number, entry.seq,
                                "does not chain to the line before it (the previous line was edited or replaced)")
        prev_hash, expected = _sha256(line), expected + 1
    count = len(lines)
    if head is not None:
        head_seq = int(head.get("seq", -1)) if isinstance(head.get("seq"), int) else -1
        if head_seq < 0:
            return VerifyResult(False, count, None, None, "the head file is unreadable")
        if head_seq > count:
            return VerifyResult(False, count, None, head_seq,
                                f"entries seq {count + 1}..{head_seq} are missing at the end (deleted)")
        if head_seq >= 1 and _sha256(lines[head_seq - 1]) != head.get("line_sha256"):
            return VerifyResult(False, count, head_seq, head_seq, "line does not match the hash kept in the head "
                                                                  "file (replaced)")
    return VerifyResult(True, count)


__all__ = ["GENESIS", "KINDS", "LEDGER_FILE", "Ledger", "LedgerEntry", "VerifyResult", "verify_bytes"]
