"""The ledger's entry format and its chain check (agent/ledger.py writes the file).

Pure functions of bytes: an export's reader can verify a copied ledger without the writer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64


def canonical(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
        if sha256_hex(canonical(entry.content())) != entry.hash:
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
        prev_hash, expected = sha256_hex(line), expected + 1
    count = len(lines)
    if head is not None:
        head_seq = int(head.get("seq", -1)) if isinstance(head.get("seq"), int) else -1
        if head_seq < 0:
            return VerifyResult(False, count, None, None, "the head file is unreadable")
        if head_seq > count:
            return VerifyResult(False, count, None, head_seq,
                                f"entries seq {count + 1}..{head_seq} are missing at the end (deleted)")
        if head_seq >= 1 and sha256_hex(lines[head_seq - 1]) != head.get("line_sha256"):
            return VerifyResult(False, count, head_seq, head_seq, "line does not match the hash kept in the head "
                                                                  "file (replaced)")
    return VerifyResult(True, count)


__all__ = ["GENESIS", "LedgerEntry", "VerifyResult", "canonical", "sha256_hex", "verify_bytes"]
