"""Proposing roles (``counter``, ``checksum``) for ``catalog init``: from signal names, and from recorded frames.

Names alone mislead: ``Counter10s`` counts seconds, ``CF_Gway_CountryCfg`` is a country code,
``uwe542_12_Backcounter`` counts down, ``RADC_a020_bdyInvalidChkSm`` counts bad checksums.  So
``role_by_name`` only looks at the last word of the name (after dropping ``LSB``/``MSB``/``Val``/digits),
and ``infer_roles`` lets the frames decide whenever there are enough of them:

* ``counter``: consecutive frames (same bus) step by +1 modulo 2**length in at least 95 % of the steps
  and the field takes at least 4 distinct values; a field named like a counter that does not behave
  like one is proposed as ``data`` (the reason says why);
* ``checksum``: a field named like a checksum (kept whatever the frames say: its algorithm may just be
  unknown, and it is counted as "not checked"), or any 4-, 8- or 16-bit field whose value one of
  ``checksums.ALGORITHMS`` computes on at least 95 % of the frames (and at least 4 distinct values).

Without frames of a message, its names decide.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import can
from cantools.database import Database, Message

from agent.decode import EXTENDED_FLAG
from agent.integrity.checker import CHECKSUM_ROLE, COUNTER_ROLE
from agent.integrity.checksums import ALGORITHMS, matches
from agent.integrity.counters import step_share
from agent.integrity.fields import Field, group_fields
from agent.model import DATA_ROLE

MIN_SHARE = 0.95
MIN_DISTINCT = 4
MIN_STEPS = 16  # fewer consecutive frames prove nothing either way: the name decides
SAMPLE_FRAMES = 2000  # per message and bus: enough to judge, bounded memory for long logs
SCREEN_FRAMES = 64  # a first look: a field far from the mark there is not tried on every frame

_WORD_RE = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
# Trailing words that say which piece or which copy of a value it is, not what it is.
_TRAILING = {"lsb", "msb", "lo", "hi", "low", "high", "val", "value", "maybe", "bit"}
_CHECKSUM_WORDS = {"checksum", "chksum", "chksm", "chks", "chk", "crc", "cksum", "cks", "parity"}
_COUNTER_WORDS = {"counter", "cnt", "count", "alive", "alivecounter", "alvcnt", "msgcnt", "msgcount",
                  "rollingcounter", "rc"}
# Words that make a counter- or checksum-like name a statistic or a status: data.
_NOT_TRANSPORT = {"invalid", "error", "err", "fail", "failed", "fault", "faults", "back", "down", "country"}


@dataclass(frozen=True)
class RoleProposal:
    role: str  # data | counter | checksum
    reason: str  # for the catalog's comment, e.g. "frames: 542 of 542 steps +1 modulo 16"
    algorithm: str | None = None  # checksums: the algorithm the frames matched
    modulus: int | None = None  # counters that wrap early: values before 0 comes again (None: 2**length)


def _words(name: str) -> list[str]:
    return [word.lower() for part in name.split("_") for word in _WORD_RE.findall(part)]


def role_by_name(signal_name: str) -> str:
    """``counter``, ``checksum`` or ``data`` from the signal's name alone."""
    words = _words(signal_name)
    if any(word in _NOT_TRANSPORT for word in words):
        return DATA_ROLE
    while words and (words[-1] in _TRAILING or words[-1].isdigit()):
        words.pop()
    if not words:
        return DATA_ROLE
    last, pair = words[-1], "".join(words[-2:])
    if last in _CHECKSUM_WORDS or pair in _CHECKSUM_WORDS or pair.endswith("checksum"):
        return CHECKSUM_ROLE
    if last in _COUNTER_WORDS or pair in _COUNTER_WORDS:
        return COUNTER_ROLE
    return DATA_ROLE


def _counter_verdict(field: Field, sequences: list[list[bytes]]) -> tuple[int | None, str] | None:
    """(modulus it rolls with, or None if it does not roll; reason), or None when there are too few frames.

    Tried: 2**length, then 2**length - 1 (Hyundai/Kia 4-bit counters that run 0..14)."""
    screen = [field.value(data) for data in sequences[0][:SCREEN_FRAMES] if field.fits(data)] if sequences else []
    hits, count = step_share(screen, field.modulus)
    if count >= MIN_STEPS and hits < count / 2:
        return None, f"frames: {hits} of the first {count} steps +1 modulo {field.modulus}"
    series = [[field.value(data) for data in payloads if field.fits(data)] for payloads in sequences]
    distinct = len({value for values in series for value in values})
    reason = ""
    for modulus in (field.modulus, field.modulus - 1):
        good = steps = 0
        for values in series:
            hits, count = step_share(values, modulus)
            good, steps = good + hits, steps + count
        if steps < MIN_STEPS:
            return None
        reason = reason or f"frames: {good} of {steps} steps +1 modulo {modulus}, {distinct} distinct values"
        if good >= MIN_SHARE * steps and min(modulus, MIN_DISTINCT) <= distinct <= modulus and modulus >= 3:
            return modulus, f"frames: {good} of {steps} steps +1 modulo {modulus}, {distinct} distinct values"
    return None, reason


def _checksum_match(message: Message, field: Field, payloads: list[bytes],
                    need_distinct: bool) -> tuple[str, str] | None:
    """(algorithm, reason) for the best algorithm matching >= 95 % of the frames, or None."""
    usable = [data for data in payloads if field.fits(data)]
    if len(usable) < MIN_STEPS or (need_distinct and len({field.value(d) for d in usable}) < MIN_DISTINCT):
        return None
    best: tuple[float, str, str] | None = None
    for algorithm in ALGORITHMS.values():
        if not algorithm.applies(message.frame_id, field):
            continue
        hits, tried = matches(algorithm, message.frame_id, field, usable[:SCREEN_FRAMES])
        if hits < tried * MIN_SHARE:
            continue
        hits, tried = matches(algorithm, message.frame_id, field, usable)
        share = hits / tried if tried else 0.0
        if share >= MIN_SHARE and (best is None or share > best[0]):
            best = (share, algorithm.name, f"frames: {algorithm.name} computes it in {hits} of {tried}")
    return (best[1], best[2]) if best else None


def _collect(database: Database, frames: Iterable[tuple[str, can.Message]]) -> dict[int, dict[str, list[bytes]]]:
    """frame key -> bus -> payloads (at most SAMPLE_FRAMES), for the database's messages."""
    keys = {message.frame_id | (EXTENDED_FLAG if message.is_extended_frame else 0) for message in database.messages}
    seen: dict[int, dict[str, list[bytes]]] = {}
    for bus, msg in frames:
        if msg.is_error_frame or msg.is_remote_frame:
            continue
        key = msg.arbitration_id | EXTENDED_FLAG if msg.is_extended_id else msg.arbitration_id
        if key not in keys:
            continue
        payloads = seen.setdefault(key, {}).setdefault(bus, [])
        if len(payloads) < SAMPLE_FRAMES:
            payloads.append(bytes(msg.data))
    return seen


def infer_roles(database: Database, frames: Iterable[tuple[str, can.Message]] = ()
                ) -> dict[tuple[str, str], RoleProposal]:
    """``(message, signal) -> proposal`` for every signal that a name or the frames make a counter or a
    checksum (a name overruled by the frames is listed as ``data``, with the reason).  ``frames`` as
    ``LogSource`` yields them: ``(bus, can.Message)``."""
    by_key = _collect(database, frames)
    proposals: dict[tuple[str, str], RoleProposal] = {}
    for message in database.messages:
        key = message.frame_id | (EXTENDED_FLAG if message.is_extended_frame else 0)
        sequences = list(by_key.get(key, {}).values())
        payloads = [data for sequence in sequences for data in sequence]
        try:
            fields = group_fields(message, [signal.name for signal in message.signals])
        except ValueError:
            continue  # a signal outside the message: nothing to say about it
        for field in fields:
            proposal = _propose(message, field, sequences, payloads)
            if proposal is not None:
                for name in field.signal_names:
                    proposals[(message.name, name)] = proposal
    return proposals


def _propose(message: Message, field: Field, sequences: list[list[bytes]],
             payloads: list[bytes]) -> RoleProposal | None:
    named = {role_by_name(name) for name in field.signal_names} - {DATA_ROLE}
    by_name = named.pop() if len(named) == 1 else None
    if by_name == CHECKSUM_ROLE:
        found = _checksum_match(message, field, payloads, need_distinct=False)
        if found:
            return RoleProposal(CHECKSUM_ROLE, f"name; {found[1]}", found[0])
        return RoleProposal(CHECKSUM_ROLE, "name; no known algorithm matches: not checked" if payloads else "name")
    verdict = _counter_verdict(field, sequences) if field.length >= 2 else None
    if verdict is not None and verdict[0] is not None:
        modulus = verdict[0] if verdict[0] != field.modulus else None
        return RoleProposal(COUNTER_ROLE, verdict[1], modulus=modulus)
    if by_name == COUNTER_ROLE:
        if verdict is None:
            return RoleProposal(COUNTER_ROLE if field.length >= 2 else DATA_ROLE,
                                "name" if field.length >= 2 else "name, but a 1-bit field cannot roll")
        return RoleProposal(DATA_ROLE, f"named like a counter, but {verdict[1]}")
    if field.length in (4, 8, 16):
        found = _checksum_match(message, field, payloads, need_distinct=True)
        if found:
            return RoleProposal(CHECKSUM_ROLE, found[1], found[0])
    return None
