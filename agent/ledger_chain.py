"""The ledger's entry format, what an entry may hold, and its chain check (agent/ledger.py writes the file).

Pure functions of bytes: an export's reader can verify a copied ledger without the writer.

* ``check_fields`` is the "no personal values" rule: it refuses field *names* that mean a raw value
  (``latitude``, ``vin``, ...) and string *values* that look like one (a VIN, coordinates, free text
  longer than a field allows); see ``TEXT_LIMITS``.
* ``loads_limited`` parses JSON with a nesting limit (``[[[[...]]]]`` 100 000 deep is refused, it never
  reaches the recursion limit).
* ``verify_bytes`` checks hashes, sequence numbers and links; ``compare_anchor`` checks the ledger against
  a head kept outside the car (``anchor_from_document`` reads one from an anchor or status message).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64
MAX_DEPTH = 32  # JSON nesting a ledger line, head or anchor may have (entries use 4)
FIELD_DEPTH = 8  # nesting of an entry's fields
# Field names that would mean a raw personal value is being written.
FORBIDDEN_FIELDS = frozenset({"latitude", "longitude", "lat", "lon", "position", "vin", "values", "value",
                              "payload", "altitude"})
# Strings are ids, hashes, counts, category and reason names: at most TEXT_MAX characters, except in these
# fields (by name, anywhere in an entry).  ``purpose`` is the one the owner writes (200 characters at most, as
# the consent rules allow); ``reason`` is the agent's own explanation; ``broker`` a host name and port;
# ``moved_to`` a file name.
TEXT_MAX = 80
TEXT_LIMITS = {"purpose": 200, "reason": 200, "broker": 261, "moved_to": 255}
_TOKEN_17 = re.compile(r"(?<![A-Za-z0-9])[A-Za-z0-9]{17}(?![A-Za-z0-9])")
_VIN_CHARS = frozenset("ABCDEFGHJKLMNPRSTUVWXYZ0123456789")
_COORDINATE_PAIR = re.compile(r"[-+]?\d{1,3}\.\d{2,}\s*[,;/ ]\s*[-+]?\d{1,3}\.\d{2,}")
_PRECISE_DECIMAL = re.compile(r"(?<![\d.])[-+]?\d+\.\d{4,}(?![\d.])")
_DEGREES = re.compile(r"\d\s*[°º]")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class NestingError(ValueError):
    """JSON nested deeper than allowed."""


def canonical(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- parsing untrusted JSON ------------------------------------------------------------------------

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


def json_depth(data: bytes) -> int:
    """How deeply ``data`` nests arrays and objects (strings skipped)."""
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_STRING.sub(b'""', data)):
        depth += 1 if bracket in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def loads_limited(data: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` that refuses input nested deeper than ``max_depth`` (NestingError, a ValueError)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if raw.count(b"[") + raw.count(b"{") > max_depth and json_depth(raw) > max_depth:
        raise NestingError(f"nested too deep (more than {max_depth} levels)")
    try:
        return json.loads(raw)
    except RecursionError:
        raise NestingError(f"nested too deep (more than {max_depth} levels)") from None


# -- what an entry may hold ---------------------------------------------------------------------------

def looks_personal(text: str) -> str | None:
    """Why ``text`` looks like a personal value (``VIN``, ``coordinates``), or None."""
    for token in _TOKEN_17.findall(text):
        upper = token.upper()
        if set(upper) <= _VIN_CHARS and any(c.isdigit() for c in upper) and any(c.isalpha() for c in upper):
            return "a VIN"
    if _COORDINATE_PAIR.search(text) or _PRECISE_DECIMAL.search(text) or _DEGREES.search(text):
        return "coordinates"
    return None


def text_problem(name: str, text: str) -> str | None:
    """What is wrong with string ``text`` in field ``name`` (None: fine)."""
    kind = looks_personal(text)
    if kind is not None:
        return f"looks like a personal value ({kind})"
    limit = TEXT_LIMITS.get(name.lower(), TEXT_MAX)
    if len(text) > limit:
        return f"is free text ({len(text)} characters; at most {limit} here)"
    return None


def check_fields(fields: Any, path: str = "fields", name: str = "", depth: int = 0) -> None:
    """Raise ValueError when ``fields`` could carry a personal value; the message names the field."""
    if depth > FIELD_DEPTH:
        raise ValueError(f"ledger: {path} is nested too deep (more than {FIELD_DEPTH} levels)")
    if isinstance(fields, dict):
        for key, value in fields.items():
            key_text = str(key)
            if key_text.lower() in FORBIDDEN_FIELDS:
                raise ValueError(f"ledger: {path}.{key} looks like a personal value; the ledger never stores them")
            problem = text_problem("", key_text)
            if problem is not None:
                raise ValueError(f"ledger: a field name in {path} {problem}; the ledger never stores them")
            check_fields(value, f"{path}.{key_text}", key_text, depth + 1)
    elif isinstance(fields, (list, tuple)):
        for index, item in enumerate(fields):
            check_fields(item, f"{path}[{index}]", name, depth + 1)
    elif isinstance(fields, str):
        problem = text_problem(name, fields)
        if problem is not None:
            raise ValueError(f"ledger: {path} {problem}; the ledger never stores personal values or free text")
    elif not (fields is None or isinstance(fields, (int, float, bool))):
        raise ValueError(f"ledger: {path} must be plain JSON data, got {type(fields).__name__}")


# -- entries and the chain --------------------------------------------------------------------------------

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


def parse_line(line: bytes) -> LedgerEntry | str:
    """The entry on ``line``, or why it is none."""
    try:
        entry = LedgerEntry.from_json(loads_limited(line))
    except NestingError:
        return "not a valid ledger entry (nested too deep)"
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
        return "not a valid ledger entry (edited)"
    return entry


def verify_bytes(data: bytes, head: dict[str, Any] | None = None) -> VerifyResult:
    """Check a ledger's bytes (and its head record): the first problem found, with its line."""
    if data and not data.endswith(b"\n"):
        count = data.count(b"\n") + 1
        return VerifyResult(False, count - 1, count, None, "the last line is incomplete (cut off or edited)")
    lines = data.split(b"\n")[:-1] if data else []
    prev_hash, expected = GENESIS, 1
    for number, line in enumerate(lines, 1):
        entry = parse_line(line)
        if isinstance(entry, str):
            return VerifyResult(False, number - 1, number, None, entry)
        if sha256_hex(canonical(entry.content())) != entry.hash:
            return VerifyResult(False, number - 1, number, entry.seq,
                                f"entry seq {entry.seq} does not match its own hash (edited)")
        if entry.seq != expected:
            if entry.seq < expected or expected in _later_seqs(lines[number:]):
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
        head_seq = head.get("seq") if isinstance(head.get("seq"), int) and not isinstance(head.get("seq"), bool) \
            else -1
        if head_seq < 0:
            return VerifyResult(False, count, None, None, "the head file is unreadable")
        if head_seq > count:
            return VerifyResult(False, count, None, head_seq,
                                f"entries seq {count + 1}..{head_seq} are missing at the end (deleted)")
        if head_seq >= 1 and sha256_hex(lines[head_seq - 1]) != head.get("line_sha256"):
            return VerifyResult(False, count, head_seq, head_seq, "line does not match the hash kept in the head "
                                                                  "file (replaced)")
    return VerifyResult(True, count)


def _later_seqs(lines: list[bytes]) -> set[int]:
    return {entry.seq for entry in map(parse_line, lines) if not isinstance(entry, str)}


@dataclass(frozen=True)
class StateNames:
    head: str = "ledger.head"
    created: str = "ledger.created"
    consent: str = "consent.jsonl"


def _existed(created: dict[str, Any] | None, consent_changes: int, names: StateNames) -> str | None:
    """Why the ledger must have had entries, whatever its own files say now; None when nothing says so."""
    if created is not None:
        since = created.get("first_time")
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(since)) \
            if isinstance(since, (int, float)) and not isinstance(since, bool) and abs(since) < 1e11 else "?"
        return f"{names.created} says it has had entries since {when}"
    if consent_changes:
        return (f"{names.consent} records {consent_changes} consent change(s), and every consent change is "
                "written to the ledger")
    return None


def verify_state(data: bytes | None, head: dict[str, Any] | None, created: dict[str, Any] | None,
                 consent_changes: int = 0, names: StateNames = StateNames()) -> VerifyResult:
    """A ledger file with its head, as found in a state directory (``data``/``head``/``created`` None: the file
    is missing; ``{}``: unreadable).  Beyond ``verify_bytes``: once the ledger has had entries (its
    ``ledger.created`` marker, or consent changes in ``consent.jsonl``, say so), a missing ledger, a missing
    head or another first line is damage."""
    if created == {}:
        return VerifyResult(False, 0, None, None, f"{names.created} is unreadable (edited)")
    existed = _existed(created, consent_changes, names)
    if data is None:
        if head and isinstance(head.get("seq"), int) and head["seq"] > 0:
            return VerifyResult(False, 0, None, None, f"the ledger file is missing but {head['seq']} entries "
                                                      "were written")
        if existed:
            return VerifyResult(False, 0, None, None, f"the ledger file is missing (deleted): {existed}")
        return VerifyResult(True, 0)
    result = verify_bytes(data, head)
    if not result.ok:
        return result
    if head is None and (result.entries or existed):
        reason = existed or "a ledger with entries always has one"
        return VerifyResult(False, result.entries, None, None,
                            f"the head file {names.head} is missing (deleted): {reason}; entries after seq "
                            f"{result.entries} may have been cut off the end")
    first = data.split(b"\n", 1)[0]
    if created and result.entries and created.get("first_line_sha256") != sha256_hex(first):
        return VerifyResult(False, result.entries, 1, 1,
                            f"not the entry the ledger started with ({names.created} keeps another first line): "
                            "the ledger was deleted and started again, or replaced")
    return result


# -- anchors: the head kept outside the car ---------------------------------------------------------------

def valid_head(value: Any) -> dict[str, Any] | None:
    """``{"seq": N, "line_sha256": hex}`` when ``value`` is one (N >= 1), else None."""
    if not isinstance(value, dict):
        return None
    seq, digest = value.get("seq"), value.get("line_sha256")
    if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 1 and isinstance(digest, str) \
            and _HEX64.match(digest):
        return {"seq": seq, "line_sha256": digest}
    return None


def anchor_from_document(document: Any) -> dict[str, Any]:
    """The anchor in a JSON document: ``{"seq", "line_sha256"}`` itself (as the receiver exports it, other keys
    allowed), ``{"ledger_head": {...}}``, or a status message (``health.anchor.ledger_head``).  The result
    also carries ``signing_key`` when the document names one.  ValueError when there is no anchor."""
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    health = document.get("health") if isinstance(document.get("health"), dict) else {}
    places = [document, document.get("ledger_head"), document.get("anchor"), health.get("anchor"),
              health.get("ledger_head")]
    for place in places:
        if not isinstance(place, dict):
            continue
        head = valid_head(place) or valid_head(place.get("ledger_head"))
        if head is not None:
            key = place.get("signing_key", document.get("signing_key"))
            if isinstance(key, str):
                head["signing_key"] = key
            return head
    if document.get("state") == "offline":
        raise ValueError("an offline status message carries no ledger head; use the last online one")
    raise ValueError('no ledger head in it (expected {"seq": N, "line_sha256": "..."} or a status message)')


def compare_anchor(data: bytes, anchor: dict[str, Any]) -> str | None:
    """None when the ledger ``data`` holds the anchored line; else what happened (rollback, rewrite)."""
    seq, digest = anchor["seq"], anchor["line_sha256"]
    lines = data.split(b"\n")[:-1]  # complete lines only: a torn last one was never anchored
    if len(lines) < seq:
        return (f"rolled back or cut: the ledger has {len(lines)} entries, but seq {seq} was anchored outside "
                f"the car (entries seq {len(lines) + 1}..{seq} are missing)")
    if sha256_hex(lines[seq - 1]) != digest:
        repairs = [entry for entry in map(parse_line, lines)
                   if not isinstance(entry, str) and entry.kind == "ledger_repair" and entry.seq <= seq]
        note = ""
        if repairs:
            last = repairs[-1]
            note = (f"; a ledger_repair entry (seq {last.seq}) says the line after seq "
                    f"{last.fields.get('after_seq')} was cut off")
        return (f"rewritten: line {seq} is not the entry anchored outside the car (its SHA-256 differs: the "
                f"ledger was replaced from seq {seq} or earlier){note}")
    return None


__all__ = ["FORBIDDEN_FIELDS", "GENESIS", "MAX_DEPTH", "TEXT_LIMITS", "TEXT_MAX", "LedgerEntry", "NestingError",
           "StateNames", "VerifyResult", "anchor_from_document", "canonical", "check_fields", "compare_anchor",
           "json_depth", "loads_limited", "looks_personal", "parse_line", "sha256_hex", "text_problem", "valid_head",
           "verify_bytes", "verify_state"]
