"""The ``--faults SPEC`` language of ``vehicle-sim replay`` (grammar in ``FAULTS_HELP``).

``parse_fault_spec`` turns SPEC text into a ``FaultSpec``; every error names
the offending item.  ``simulator.faults`` applies a FaultSpec to a frame stream.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

FAULTS_HELP = """\
comma-separated faults, e.g. drop=0.01,corrupt=0.005,dup=0.01,reorder=0.01,delay=0.01:50ms,
errburst=20@10s,silence=5s@30s,jump=+3600s@20s,seed=7.
Per frame (P = probability 0..1 or a percentage such as 1.5%; they must add up to <= 1):
drop=P lose the frame; corrupt=P[:bits|length|any] flip 1-3 data bits or cut the data short (wrong DLC);
dup=P send it twice; reorder=P[:N] hold it back until N (default 1) later frames went out;
delay=P:D send it D later.
With --dbc: checksum=P a wrong checksum (only the checksum's bits change; messages whose checksum
algorithm is known); counter=P the rolling counter skips a value (from that frame on, that message's
counters run one ahead, checksums fixed up: one counter jump per fault and counter).
At log time T from the first frame (repeatable; add /PERIOD to repeat, e.g. silence=2s@10s/60s):
errburst=N@T N error frames; silence=D@T no frames on any bus for D;
jump=+D@T or jump=-D@T shift every later timestamp by D (RTC set by GNSS, logger clock reset).
seed=N (default 0).  Durations take a unit: us, ms, s, min, h."""

PER_FRAME = ("drop", "corrupt", "dup", "reorder", "delay", "checksum", "counter")
CORRUPT_MODES = ("any", "bits", "length")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}
_DURATION = re.compile(r"([+-]?)(\d+(?:\.\d*)?|\.\d+)(us|ms|s|min|h)")


class FaultSpecError(ValueError):
    """A SPEC that cannot be parsed; the message names the offending item."""


@dataclass(frozen=True)
class TimedFault:
    """``amount`` (error frames, silence length or clock step in seconds) at log time ``at``, every ``period``."""

    amount: float
    at: float
    period: float | None = None

    def times(self) -> Iterator[float]:
        start = self.at
        while True:
            yield start
            if self.period is None:
                return
            start += self.period


@dataclass(frozen=True)
class FaultSpec:
    drop: float = 0.0
    corrupt: float = 0.0
    corrupt_mode: str = "any"
    dup: float = 0.0
    reorder: float = 0.0
    reorder_depth: int = 1
    delay: float = 0.0
    delay_seconds: float = 0.0
    checksum: float = 0.0
    counter: float = 0.0
    error_bursts: tuple[TimedFault, ...] = ()
    silences: tuple[TimedFault, ...] = ()
    jumps: tuple[TimedFault, ...] = ()
    seed: int = 0


def parse_fault_spec(text: str) -> FaultSpec:
    """Parse SPEC; FaultSpecError names the first bad item."""
    values: dict[str, Any] = {}
    timed: dict[str, list[TimedFault]] = {"errburst": [], "silence": [], "jump": []}
    items = [item.strip() for item in text.split(",")]
    if not any(items):
        raise FaultSpecError("fault spec is empty; expected e.g. drop=0.01,seed=7")
    for item in items:
        if not item:
            raise FaultSpecError(f"fault spec {text!r}: empty item (doubled or trailing comma)")
        kind, equals, value = (part.strip() for part in item.partition("="))
        if not equals or not value:
            raise FaultSpecError(f"fault spec item {item!r}: expected KIND=VALUE")
        try:
            if kind in timed:
                timed[kind].append(_timed(kind, value))
                continue
            if kind in values:
                raise FaultSpecError("given twice")
            if kind in ("drop", "dup", "checksum", "counter"):
                values[kind] = _probability(value)
            elif kind == "corrupt":
                values[kind] = _with_option(value, lambda mode: _choice(mode, CORRUPT_MODES), "any")
            elif kind == "reorder":
                values[kind] = _with_option(value, _depth, 1)
            elif kind == "delay":
                probability, colon, duration = value.partition(":")
                if not colon:
                    raise FaultSpecError("expected delay=P:DURATION, e.g. delay=0.01:50ms")
                values[kind] = (_probability(probability), _duration(duration, signed=False))
            elif kind == "seed":
                values[kind] = _integer(value, "seed")
            else:
                raise FaultSpecError(f"unknown fault {kind!r}; known: {', '.join((*PER_FRAME, *timed, 'seed'))}")
        except FaultSpecError as exc:
            if str(exc).startswith("fault spec"):
                raise
            raise FaultSpecError(f"fault spec item {item!r}: {exc}") from None
    return _build(values, timed, text)


def _build(values: dict[str, Any], timed: dict[str, list[TimedFault]], text: str) -> FaultSpec:
    corrupt, corrupt_mode = values.get("corrupt", (0.0, "any"))
    reorder, depth = values.get("reorder", (0.0, 1))
    delay, delay_seconds = values.get("delay", (0.0, 0.0))
    spec = FaultSpec(drop=values.get("drop", 0.0), corrupt=corrupt, corrupt_mode=corrupt_mode,
                     dup=values.get("dup", 0.0), reorder=reorder, reorder_depth=depth,
                     checksum=values.get("checksum", 0.0), counter=values.get("counter", 0.0),
                     delay=delay, delay_seconds=delay_seconds, seed=values.get("seed", 0),
                     error_bursts=tuple(timed["errburst"]), silences=tuple(timed["silence"]),
                     jumps=tuple(timed["jump"]))
    total = sum(getattr(spec, kind) for kind in PER_FRAME)
    if total > 1 + 1e-12:
        raise FaultSpecError(f"fault spec {text!r}: {'+'.join(PER_FRAME)} add up to {total:g}; "
                             "at most 1 (one fault per frame)")
    return spec


def _probability(text: str) -> float:
    text = text.strip()
    percent = text.endswith("%")
    try:
        value = float(text[:-1] if percent else text)
    except ValueError:
        raise FaultSpecError(f"expected a probability (0..1 or a percentage), got {text!r}") from None
    value = value / 100 if percent else value
    if not 0.0 <= value <= 1.0:
        raise FaultSpecError(f"probability {text!r} is outside 0..1")
    return value


def _with_option(value: str, option: Callable[[str], Any], default: Any) -> tuple[float, Any]:
    probability, colon, extra = value.partition(":")
    return _probability(probability), (option(extra.strip()) if colon else default)


def _choice(text: str, allowed: tuple[str, ...]) -> str:
    if text not in allowed:
        raise FaultSpecError(f"expected one of {', '.join(allowed)}, got {text!r}")
    return text


def _depth(text: str) -> int:
    depth = _integer(text, "reorder depth")
    if depth < 1:
        raise FaultSpecError(f"reorder depth must be >= 1, got {depth}")
    return depth


def _integer(text: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise FaultSpecError(f"{what} must be a whole number, got {text.strip()!r}") from None


def _duration(text: str, signed: bool) -> float:
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise FaultSpecError(f"expected a duration with a unit (us, ms, s, min, h), got {text.strip()!r}")
    sign, number, unit = match.groups()
    if sign and not signed:
        raise FaultSpecError(f"duration {text.strip()!r} cannot have a sign")
    return (-1 if sign == "-" else 1) * float(number) * _UNITS[unit]


def _timed(kind: str, value: str) -> TimedFault:
    amount_text, at_sign, when = value.partition("@")
    if not at_sign:
        raise FaultSpecError(f"expected {kind}=AMOUNT@TIME, e.g. {_EXAMPLES[kind]}")
    at_text, slash, period_text = when.partition("/")
    at = _duration(at_text, signed=False)
    period = _duration(period_text, signed=False) if slash else None
    if period is not None and period <= 0:
        raise FaultSpecError("repeat period must be > 0")
    if kind == "errburst":
        amount = float(_integer(amount_text, "error-frame count"))
        if amount < 1:
            raise FaultSpecError("error-frame count must be >= 1")
    elif kind == "silence":
        amount = _duration(amount_text, signed=False)
        if amount <= 0 or (period is not None and amount >= period):
            raise FaultSpecError("silence must be > 0 and shorter than its repeat period")
    else:
        if amount_text.strip()[:1] not in ("+", "-"):
            raise FaultSpecError(f"a clock jump needs a sign (+3600s or -10min), got {amount_text.strip()!r}")
        amount = _duration(amount_text, signed=True)
    return TimedFault(amount, at, period)


_EXAMPLES = {"errburst": "errburst=20@10s", "silence": "silence=5s@30s", "jump": "jump=+3600s@20s"}
