"""Consent commands from the network: they may narrow, never widen.

Only the owner, on the car, can grant.  A message from the backend (MQTT
command, remote configuration) may revoke a category, coarsen the location
level, bring an expiry forward or switch on the per-drive location option.
Anything else - grant, longer expiry, finer level, removing a privacy zone,
unknown or malformed commands - is refused.

Command payload (JSON object)::

    {"action": "revoke", "category": "location"}
    {"action": "narrow", "category": "location", "level": "city"}
    {"action": "narrow", "category": "driving", "expires_at": 1718000000}
    {"action": "location_off_at_ignition"}

The commands topic is network-facing input, so a refusal is described with a
fixed vocabulary and sizes only: the action (one of ``ACTIONS``, anything else
is ``other``), the category (one of the known categories, anything else is
``other``), a reason code (one of ``REASONS``) and the payload's size in bytes.
No text of the payload ever reaches the ledger or the log.  Refusals are
recorded one by one in the ledger (and logged) at most ``per_minute`` times a
minute (a token bucket); beyond that they are only counted, and one
``remote_refused`` entry with reason ``rate_limited:<count>`` records how many
were not written one by one.

``RemoteCommands`` is what the running agent uses: ``submit`` (MQTT network
thread) classifies a payload and queues only the commands that may narrow;
``process`` (pipeline thread, about once a second) applies them and writes the
ledger; ``counters`` is for the status.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from agent.ledger import Ledger
from agent.model import ALL_CATEGORIES
from agent.privacy.config import ConsentConfig
from agent.privacy.consent import EXPIRY_SECONDS, ConsentError
from agent.privacy.policy import NETWORK, ConsentPolicy
from agent.privacy.transforms import LOCATION_LEVELS, level_rank

log = logging.getLogger(__name__)

MAX_PAYLOAD = 4096
NARROWING_ACTIONS = ("revoke", "narrow", "location_off_at_ignition")
# Actions a backend might try that would widen consent: named in the record, always refused.
WIDENING_ACTIONS = ("grant", "extend", "zone_remove")
ACTIONS = (*NARROWING_ACTIONS, *WIDENING_ACTIONS, "other")
CATEGORY_OTHER = "other"
# Reason code -> what it means (the text is fixed: it never contains anything from the payload).
REASONS = {
    "too_large": f"command larger than {MAX_PAYLOAD} bytes",
    "not_json": "not a JSON object",
    "unknown_action": "unknown action",
    "unknown_category": "unknown category",
    "widens": "the network can only narrow consent (revoke, narrow); granting is for the owner in the car",
    "incomplete": "the command lacks a category, a level or expires_at",
    "level_not_location": "a level applies to location only",
    "unknown_level": "unknown location level",
    "bad_expiry": "expires_at must be a time in seconds",
    "not_narrower": "would not narrow consent (not granted, or not coarser or earlier than now)",
    "busy": "too many commands pending",
}
RATE_LIMITED = "rate_limited"  # the summary entry: "rate_limited:<count>"
PER_MINUTE = 10  # refusals recorded one by one per minute (and the burst allowed at once)
QUEUE_SIZE = 64  # narrowing commands waiting for the pipeline thread
SUMMARY_QUIET_S = 2.0  # a summary is written once refusals paused this long (and the bucket allows one) ...
SUMMARY_EVERY_S = 60.0  # ... or at the latest this long after the previous one


@dataclass(frozen=True)
class Refusal:
    action: str
    category: str | None
    reason: str
    size: int


@dataclass(frozen=True)
class _Candidate:
    """A well-formed command that may narrow: only the policy can tell (fixed-vocabulary fields only)."""

    action: str
    category: str | None
    size: int
    level: str | None = None
    expires_at: float | None = None


def _action(value: Any) -> str:
    return value if isinstance(value, str) and value in ACTIONS else "other"


def classify(payload: bytes) -> Refusal | _Candidate:
    """What a payload is, without the policy: a refusal, or a command only the policy can judge."""
    size = len(payload)
    if size > MAX_PAYLOAD:
        return Refusal("other", None, "too_large", size)
    try:
        command = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return Refusal("other", None, "not_json", size)
    if not isinstance(command, dict):
        return Refusal("other", None, "not_json", size)
    action, raw_category = _action(command.get("action")), command.get("category")
    category = None if raw_category is None else raw_category if raw_category in ALL_CATEGORIES else CATEGORY_OTHER
    if action == "other":
        return Refusal(action, category, "unknown_action", size)
    if category == CATEGORY_OTHER:
        return Refusal(action, category, "unknown_category", size)
    if action in WIDENING_ACTIONS:
        return Refusal(action, category, "widens", size)
    if action == "location_off_at_ignition":
        return _Candidate(action, category, size)
    if category is None:
        return Refusal(action, category, "incomplete", size)
    if action == "revoke":
        return _Candidate(action, category, size)
    if "level" in command:  # narrow
        if category != "location":
            return Refusal(action, category, "level_not_location", size)
        level = command["level"]
        if not isinstance(level, str) or level not in LOCATION_LEVELS:
            return Refusal(action, category, "unknown_level", size)
        return _Candidate(action, category, size, level=level)
    if "expires_at" in command:
        expires_at = command["expires_at"]
        try:
            usable = not isinstance(expires_at, bool) and isinstance(expires_at, (int, float)) and \
                math.isfinite(expires_at)
        except OverflowError:  # an integer too large for a float
            usable = False
        if not usable:
            return Refusal(action, category, "bad_expiry", size)
        return _Candidate(action, category, size, expires_at=float(expires_at))
    return Refusal(action, category, "incomplete", size)


UNCHANGED = ("not_granted", "already_set")  # accepted, but there was nothing to narrow


def _apply(command: _Candidate, policy: ConsentPolicy) -> tuple[str, str]:
    """(code, text) or raises ConsentError; the policy takes its own lock."""
    category = command.category
    if command.action == "revoke":
        assert category is not None
        if policy.revoke(category, source=NETWORK) is None:
            return "not_granted", f"{category} was not granted"
        return "revoked", f"{category} revoked"
    if command.action == "location_off_at_ignition":
        if policy.set_location_off_at_ignition(True, source=NETWORK) is None:
            return "already_set", "location already switches off at each ignition"
        return "location_off_at_ignition", "location now switches off at each ignition"
    if command.level is not None:
        policy.narrow_level(command.level, source=NETWORK)
        return "narrowed", f"location narrowed to {command.level}"
    assert category is not None and command.expires_at is not None
    policy.shorten(category, command.expires_at, source=NETWORK)
    return "shortened", f"{category} now expires earlier"


class TokenBucket:
    """At most ``capacity`` at once, refilled at ``per_second``; not thread-safe (callers lock)."""

    def __init__(self, capacity: float, per_second: float, clock: Callable[[], float]) -> None:
        self.capacity, self.per_second, self.clock = capacity, per_second, clock
        self.tokens = capacity
        self._at = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._at) * self.per_second)
        self._at = now

    def available(self) -> bool:
        self._refill()
        return self.tokens >= 1

    def take(self) -> bool:
        if not self.available():
            return False
        self.tokens -= 1
        return True


class RemoteCommands:
    """The commands topic: classification, the narrow-only rule, a rate-limited record, counters.

    Thread-safe: ``submit`` runs on the MQTT network thread, ``process`` on the pipeline thread."""

    def __init__(self, per_minute: int = PER_MINUTE, queue_size: int = QUEUE_SIZE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.queue_size = queue_size
        self._lock = threading.Lock()
        self._bucket = TokenBucket(per_minute, per_minute / 60.0, clock)
        self._queue: deque[_Candidate] = deque()
        self._to_record: list[Refusal] = []  # bounded by the bucket
        self._limited: Counter[str] = Counter()  # reason -> refusals not recorded one by one yet
        self._limited_bytes = 0
        self._last_refusal = self._last_summary = clock()
        self.received = self.accepted = self.refused = self.rate_limited = self.summaries = 0
        self.reasons: Counter[str] = Counter()

    # -- any thread ------------------------------------------------------------------
    def submit(self, payload: bytes) -> None:
        """A payload from the commands topic: refused at once when the policy is not needed, else queued."""
        outcome = classify(bytes(payload))
        with self._lock:
            self.received += 1
            if isinstance(outcome, _Candidate):
                if len(self._queue) < self.queue_size:
                    self._queue.append(outcome)
                    return
                outcome = Refusal(outcome.action, outcome.category, "busy", outcome.size)
            self._refused_locked(outcome)

    def counters(self) -> dict[str, Any]:
        """For the status: counts and fixed reason codes only."""
        with self._lock:
            return {"received": self.received, "accepted": self.accepted, "refused": self.refused,
                    "rate_limited": self.rate_limited, "pending": len(self._queue),
                    "reasons": dict(sorted(self.reasons.items()))}

    # -- pipeline thread ---------------------------------------------------------------
    def process(self, policy: ConsentPolicy, ledger: Ledger | None) -> list[tuple[bool, str]]:
        """Apply the queued commands, write what the rate limit lets through; returns (accepted, text)
        of what was applied or recorded (for the caller's log; nothing else happened worth a line)."""
        events: list[tuple[bool, str]] = []
        while True:
            with self._lock:
                if not self._queue:
                    break
                command = self._queue.popleft()
            accepted, code, text = self._judge(command, policy)
            if accepted and code not in UNCHANGED:
                events.append((True, text))
        return events + self._write(ledger, force=False)

    def flush(self, ledger: Ledger | None) -> list[tuple[bool, str]]:
        """Write every pending record and the summary now (at shutdown)."""
        return self._write(ledger, force=True)

    def handle(self, payload: bytes, policy: ConsentPolicy, ledger: Ledger | None = None) -> tuple[bool, str]:
        """One command at once (tests, tools): (accepted, reason code); the record is rate-limited as usual."""
        accepted, code, _text = self._handle(payload, policy, ledger)
        return accepted, code

    # -- inside ------------------------------------------------------------------------------
    def _handle(self, payload: bytes, policy: ConsentPolicy, ledger: Ledger | None) -> tuple[bool, str, str]:
        outcome = classify(bytes(payload))
        with self._lock:
            self.received += 1
            if isinstance(outcome, Refusal):
                self._refused_locked(outcome)
        result = (False, outcome.reason, REASONS[outcome.reason]) if isinstance(outcome, Refusal) \
            else self._judge(outcome, policy)
        self._write(ledger, force=False)
        return result

    def _judge(self, command: _Candidate, policy: ConsentPolicy) -> tuple[bool, str, str]:
        """(accepted, code, text); a refusal goes to the rate-limited record."""
        try:
            code, text = _apply(command, policy)
        except ConsentError:  # its message may quote the command: only the code is kept
            with self._lock:
                self._refused_locked(Refusal(command.action, command.category, "not_narrower", command.size))
            return False, "not_narrower", REASONS["not_narrower"]
        with self._lock:
            self.accepted += 1
        return True, code, text

    def _refused_locked(self, refusal: Refusal) -> None:
        self.refused += 1
        self.reasons[refusal.reason] += 1
        self._last_refusal = self.clock()
        if not self._limited and self._bucket.take():
            self._to_record.append(refusal)
            return
        # Once refusals are being counted, they stay counted until the summary is written.
        self.rate_limited += 1
        self._limited[refusal.reason] += 1
        self._limited_bytes += refusal.size

    def _write(self, ledger: Ledger | None, force: bool) -> list[tuple[bool, str]]:
        with self._lock:
            records, self._to_record = self._to_record, []
            summary = None
            now = self.clock()
            if self._limited and (force or now - self._last_summary >= SUMMARY_EVERY_S or
                                  (now - self._last_refusal >= SUMMARY_QUIET_S and self._bucket.take())):
                summary = (sum(self._limited.values()), dict(self._limited), self._limited_bytes)
                self._limited.clear()
                self._limited_bytes = 0
                self._last_summary = now
                self.summaries += 1
        events: list[tuple[bool, str]] = []
        for refusal in records:
            text = REASONS[refusal.reason]
            log.warning("refused consent command from the network: %s (action=%s, category=%s, %d bytes)",
                        text, refusal.action, refusal.category, refusal.size)
            self._record(ledger, refusal.action, refusal.category, refusal.reason, refusal.size)
            events.append((False, f"{text} (action={refusal.action}, category={refusal.category})"))
        if summary is not None:
            count, by_reason, size = summary
            reasons = ", ".join(f"{code} {n}" for code, n in sorted(by_reason.items()))
            log.warning("refused %d more consent commands from the network, not recorded one by one "
                        "(at most %d a minute are): %s; %d bytes", count, int(self._bucket.capacity), reasons, size)
            self._record(ledger, "other", None, f"{RATE_LIMITED}:{count}", size)
            events.append((False, f"{count} more refused, not recorded one by one ({reasons})"))
        return events

    @staticmethod
    def _record(ledger: Ledger | None, action: str, category: str | None, reason: str, size: int) -> None:
        if ledger is None:
            return
        # Ledger.record_remote_refused has no size: the same entry, with the payload's size in bytes.
        try:
            ledger.append("remote_refused", {"action": action, "category": category, "reason": reason,
                                             "bytes": size})
        except ValueError as exc:  # fixed words only, so never expected; the pipeline thread must go on
            log.error("remote_refused entry not written: %s", exc)


def handle_remote_command(payload: bytes, policy: ConsentPolicy, ledger: Ledger | None = None) -> tuple[bool, str]:
    """One network consent command, applied if it only narrows; returns (accepted, what happened) in fixed
    words.  Not rate-limited across calls: the running agent uses one ``RemoteCommands``."""
    accepted, _code, text = RemoteCommands()._handle(payload, policy, ledger)
    return accepted, text


def narrow_config(current: ConsentConfig, remote: dict[str, Any]) -> ConsentConfig:
    """Combine a remotely delivered ``consent`` section with the local one, keeping only narrowings:
    the intersection of grantable categories, the shorter maximum expiry, the coarser finest level,
    and the per-drive option if either side sets it.  Unknown keys are ignored (and counted in the log)."""
    grantable = current.grantable
    if isinstance(remote.get("grantable"), list):
        grantable = [c for c in current.grantable if c in remote["grantable"]]
    max_expiry = current.max_expiry
    if remote.get("max_expiry") in EXPIRY_SECONDS and \
            EXPIRY_SECONDS[remote["max_expiry"]] < EXPIRY_SECONDS[current.max_expiry]:
        max_expiry = remote["max_expiry"]
    finest = current.finest_location_level
    if remote.get("finest_location_level") in LOCATION_LEVELS and \
            level_rank(remote["finest_location_level"]) < level_rank(finest):
        finest = remote["finest_location_level"]
    off = current.location_off_at_ignition or remote.get("location_off_at_ignition") is True
    ignored = set(remote) - {"grantable", "max_expiry", "finest_location_level", "location_off_at_ignition",
                             "profile"}
    if ignored:
        log.warning("remote consent configuration: ignored %d unknown key(s)", len(ignored))
    return replace(current, grantable=grantable, max_expiry=max_expiry, finest_location_level=finest,
                   location_off_at_ignition=off)


__all__ = ["ACTIONS", "REASONS", "RemoteCommands", "TokenBucket", "classify", "handle_remote_command",
           "narrow_config"]
