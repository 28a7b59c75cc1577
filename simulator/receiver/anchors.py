"""Ledger anchors: the latest ledger head each vehicle published, kept where nobody in the car can change it.

An online status message carries ``health.anchor`` (agent/export/anchor.py)::

    {"ledger_head": {"seq": 42, "line_sha256": "<64 hex>"}, "signing_key": "SHA256:<64 hex>"}

The receiver keeps one row per vehicle in ``ledger_anchors``; ``vehicle-sim cloud anchor`` exports it for
``vehicle-agent ledger verify --against FILE``, which then finds a ledger rolled back, cut or replaced in
the car below it.  The kept anchor never goes backwards.  Against the stored row an anchor that comes is

===============================================  ============================================
no row for the vehicle                           stored
a signing key other than the stored one          conflict ``signing_key_changed``, row kept
a lower seq                                      conflict ``seq_went_back``, row kept
the same seq, another line hash                  conflict ``same_seq_other_hash``, row kept
the same seq and hash                            confirmed: ``status_time`` moves on (never back)
a higher seq                                     the row is replaced (a key already known stays)
===============================================  ============================================

A conflict is written to ``ledger_anchor_conflicts`` once: the same conflicting anchor again (a retained
status delivered at every reconnect, or published again each minute) adds no row.  An anchor without a
signing key neither conflicts nor erases the one known.  Only ``online`` status messages carry an anchor;
``offline`` ones (the last will) never touch it.  The decision runs inside the caller's write transaction
(``ReceiverStore.set_status``), so receivers sharing a database (a SQLite file, or PostgreSQL) agree.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.ledger_chain import valid_head

if TYPE_CHECKING:
    from simulator.receiver.sql import Database

SQLITE_MAX = 2**63 - 1
STORED, ADVANCED, CONFIRMED = "stored", "advanced", "confirmed"
SEQ_WENT_BACK, SAME_SEQ_OTHER_HASH, SIGNING_KEY_CHANGED = "seq_went_back", "same_seq_other_hash", \
    "signing_key_changed"
CONFLICT_REASONS = (SIGNING_KEY_CHANGED, SEQ_WENT_BACK, SAME_SEQ_OTHER_HASH)
REPEATED = "repeated_conflict"  # a conflict already recorded, not written again

_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEY = re.compile(r"SHA256:([0-9a-fA-F]{64})")

ANCHOR_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_anchors (
    vehicle {KEYTEXT} PRIMARY KEY,
    seq {INT} NOT NULL,
    line_sha256 {TEXT} NOT NULL,
    signing_key {TEXT},
    status_time {REAL},
    received {REAL} NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_anchor_conflicts (
    id {ID},
    vehicle {KEYTEXT} NOT NULL,
    received {REAL} NOT NULL,
    kept_seq {INT} NOT NULL,
    kept_line_sha256 {TEXT} NOT NULL,
    got_seq {INT} NOT NULL,
    got_line_sha256 {TEXT} NOT NULL,
    got_signing_key {TEXT},
    reason {TEXT} NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_anchor_conflicts_of ON ledger_anchor_conflicts (vehicle)
"""  # a template: simulator/receiver/sql.py renders the {TYPE} tokens for each database
ANCHOR_COLUMNS = ("vehicle", "seq", "line_sha256", "signing_key", "status_time", "received")
CONFLICT_COLUMNS = ("id", "vehicle", "received", "kept_seq", "kept_line_sha256", "got_seq", "got_line_sha256",
                    "got_signing_key", "reason")


class AnchorRejected(ValueError):
    """A status message's anchor that is not one; the text says why."""


@dataclass(frozen=True)
class Anchor:
    seq: int
    line_sha256: str
    signing_key: str | None = None  # "SHA256:<64 lowercase hex>"


def parse_anchor(value: Any) -> Anchor | None:
    """The anchor of ``health.anchor``; None when it holds no ledger head (an empty ledger, or one the agent
    could not read); AnchorRejected when it is malformed."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise AnchorRejected(f"health.anchor {repr(value)[:40]} is not an object")
    head = value.get("ledger_head")
    if head is None:
        return None
    checked = valid_head(head)
    if checked is None or not _HEX64.fullmatch(checked["line_sha256"]) or checked["seq"] > SQLITE_MAX:
        raise AnchorRejected(f"health.anchor.ledger_head {repr(head)[:120]} is not "
                             f'{{"seq": 1..{SQLITE_MAX}, "line_sha256": "<64 lowercase hex>"}}')
    key = value.get("signing_key")
    if key is not None:
        match = _KEY.fullmatch(key) if isinstance(key, str) else None
        if match is None:
            raise AnchorRejected(f"health.anchor.signing_key {repr(key)[:80]} is not SHA256:<64 hex>")
        key = "SHA256:" + match.group(1).lower()
    return Anchor(checked["seq"], checked["line_sha256"], key)


def anchor_of_status(body: Any) -> Anchor | None:
    """The anchor an ``online`` status message carries (None: none, e.g. an older agent without one)."""
    if not isinstance(body, dict) or body.get("state") != "online":
        return None
    health = body.get("health")
    if not isinstance(health, dict):
        return None
    return parse_anchor(health.get("anchor"))


def status_time(body: Any) -> float | None:
    """The status message's own ``time`` (the vehicle's clock), when it is a finite number."""
    value = body.get("time") if isinstance(body, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def record(db: Database, vehicle: str, anchor: Anchor, when: float | None, received: float) -> str:
    """Apply the rules (module docstring) inside the caller's transaction: STORED, ADVANCED, CONFIRMED, one of
    CONFLICT_REASONS (a conflict written now) or REPEATED (that conflict is recorded already)."""
    row = db.execute("SELECT seq, line_sha256, signing_key, status_time FROM ledger_anchors WHERE vehicle=?",
                     (vehicle,)).fetchone()
    if row is None:
        db.execute(f"INSERT INTO ledger_anchors ({', '.join(ANCHOR_COLUMNS)}) VALUES (?,?,?,?,?,?)",
                   (vehicle, anchor.seq, anchor.line_sha256, anchor.signing_key, when, received))
        return STORED
    seq, digest, key, kept_time = row
    if key is not None and anchor.signing_key is not None and anchor.signing_key != key:
        return _conflict(db, vehicle, received, (seq, digest), anchor, SIGNING_KEY_CHANGED)
    if anchor.seq < seq:
        return _conflict(db, vehicle, received, (seq, digest), anchor, SEQ_WENT_BACK)
    if anchor.seq == seq and anchor.line_sha256 != digest:
        return _conflict(db, vehicle, received, (seq, digest), anchor, SAME_SEQ_OTHER_HASH)
    if anchor.seq == seq:
        later = kept_time if when is None or (kept_time is not None and kept_time >= when) else when
        db.execute("UPDATE ledger_anchors SET status_time=?, signing_key=COALESCE(signing_key, ?) WHERE vehicle=?",
                   (later, anchor.signing_key, vehicle))
        return CONFIRMED
    db.execute("UPDATE ledger_anchors SET seq=?, line_sha256=?, signing_key=COALESCE(signing_key, ?), "
               "status_time=COALESCE(?, status_time), received=? WHERE vehicle=?",
               (anchor.seq, anchor.line_sha256, anchor.signing_key, when, received, vehicle))
    return ADVANCED


def _conflict(db: Database, vehicle: str, received: float, kept: tuple[int, str], anchor: Anchor,
              reason: str) -> str:
    values = (vehicle, *kept, anchor.seq, anchor.line_sha256, anchor.signing_key, reason)
    seen = db.execute("SELECT 1 FROM ledger_anchor_conflicts WHERE vehicle=? AND kept_seq=? AND kept_line_sha256=? "
                      f"AND got_seq=? AND got_line_sha256=? AND got_signing_key {db.dialect.null_safe_eq} ? "
                      "AND reason=?", values).fetchone()
    if seen:
        return REPEATED
    db.execute("INSERT INTO ledger_anchor_conflicts (vehicle, kept_seq, kept_line_sha256, got_seq, got_line_sha256, "
               "got_signing_key, reason, received) VALUES (?,?,?,?,?,?,?,?)", (*values, received))
    return reason


def anchor_row(db: Database, vehicle: str) -> dict[str, Any] | None:
    row = db.execute(f"SELECT {', '.join(ANCHOR_COLUMNS)} FROM ledger_anchors WHERE vehicle=?", (vehicle,)).fetchone()
    return None if row is None else dict(zip(ANCHOR_COLUMNS, row))


def conflict_rows(db: Database, vehicle: str | None = None) -> list[dict[str, Any]]:
    where, params = ("WHERE vehicle=?", (vehicle,)) if vehicle is not None else ("", ())
    rows = db.execute(f"SELECT {', '.join(CONFLICT_COLUMNS)} FROM ledger_anchor_conflicts {where} ORDER BY id",
                      params).fetchall()
    return [dict(zip(CONFLICT_COLUMNS, row)) for row in rows]


__all__ = ["ADVANCED", "ANCHOR_SCHEMA", "CONFIRMED", "CONFLICT_REASONS", "REPEATED", "SAME_SEQ_OTHER_HASH",
           "SEQ_WENT_BACK", "SIGNING_KEY_CHANGED", "STORED", "Anchor", "AnchorRejected", "anchor_of_status",
           "anchor_row", "conflict_rows", "parse_anchor", "record", "status_time"]
