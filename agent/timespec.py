"""The one reading of times and durations typed by people, and the one way times are shown to them.

Every option that takes a moment (``export --from``, ``ledger --since`` ...) or
a duration (``record --duration``, ``cloud --duration`` ...) goes through this
module, so what one command accepts every command accepts:

- durations: ``90`` or ``90s``, ``15m``, ``2h``, ``7d``, ``1w``, ``1.5h``,
  and sums such as ``1h30m`` or ``2d 4h``;
- moments: ``now``, ``today`` / ``yesterday`` (local midnight), a duration
  meaning that long ago (``7d``, ``7d ago``), an ISO 8601 date or time
  (``2024-06-01``, ``2024-06-01T08:00``: local time, refused when a DST
  change skips or repeats it; ``...Z`` or ``+08:00``: that offset), or epoch
  seconds (``1717228800``; a bare number above ``EPOCH_FLOOR`` is a moment,
  below it a duration ago, e.g. ``3600``).

Times shown to people are local ISO 8601 with the UTC offset (``iso_local``),
never epoch floats; files for machines carry epoch seconds beside them.
"""

from __future__ import annotations

import argparse
import math
import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta

UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", re.IGNORECASE)
# A bare number at least this large is epoch seconds (2001-09-09); smaller ones are seconds ago.
EPOCH_FLOOR = 1e9
DURATION_FORMS = "a duration such as 90s, 15m, 2h, 7d, 1w or 1h30m"
MOMENT_FORMS = ("now, today, yesterday, a duration ago (7d, 12h, 30m), an ISO date/time "
                "(2024-06-01, 2024-06-01T08:00, 2024-06-01T08:00:00+08:00) or epoch seconds")


def parse_duration(text: str, option: str = "duration") -> float:
    """Seconds in ``text``; ValueError naming ``option``, the text and the accepted forms."""
    body = text.strip()
    body = body[:-4].rstrip() if body.lower().endswith(" ago") else body
    total, position, parts = 0.0, 0, 0
    while position < len(body):
        match = _PART.match(body, position)
        if match is None or match.end() == position:
            break
        unit = match.group(2).lower() or "s"
        if not match.group(2) and match.end() < len(body):
            break  # a bare number is only allowed as the whole text ("90"), not inside "90 2h"
        total += float(match.group(1)) * UNIT_SECONDS[unit]
        position, parts = match.end(), parts + 1
    if not parts or position != len(body) or not math.isfinite(total):
        raise ValueError(f"{option}: expected {DURATION_FORMS}, got {text!r}")
    return total


def _local_midnight(now: float, days_back: int) -> float:
    day = datetime.fromtimestamp(now).date() - timedelta(days=days_back)
    return datetime(day.year, day.month, day.day).timestamp()  # naive = local: right across DST changes


def parse_moment(text: str, option: str = "time", now: float | None = None) -> float:
    """Epoch seconds for ``text`` (see the module docstring for the forms)."""
    now = time.time() if now is None else now
    word = text.strip().lower()
    if word == "now":
        return now
    if word in ("today", "yesterday"):
        return _local_midnight(now, 0 if word == "today" else 1)
    try:
        number = float(word)
    except ValueError:
        number = None
    if number is not None and math.isfinite(number):
        return number if number >= EPOCH_FLOOR else now - number
    try:
        return now - parse_duration(word, option)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{option}: expected {MOMENT_FORMS}; got {text!r}") from None
    if moment.tzinfo is None:
        return _local_wall_time(moment, option, text)
    return moment.timestamp()


def _local_wall_time(moment: datetime, option: str, text: str) -> float:
    """A naive ISO time read as local time; refused where a DST change makes the wall clock skip it or
    show it twice, instead of guessing an hour."""
    first, second = moment.replace(fold=0).timestamp(), moment.replace(fold=1).timestamp()
    offsets = [_offset(first), _offset(second)]
    if datetime.fromtimestamp(first) != moment.replace(fold=0):  # the clocks jumped over it
        raise ValueError(f"{option}: {text!r} does not exist in local time (the clocks skipped it for daylight "
                         f"saving time); give it with a UTC offset, e.g. {text.strip()}{offsets[0]}")
    if first != second:
        raise ValueError(f"{option}: {text!r} happens twice in local time (daylight saving time ends); give it "
                         f"with a UTC offset: {' or '.join(text.strip() + o for o in offsets)}")
    return first


def _offset(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).astimezone().isoformat()[-6:]  # "+02:00"


def iso_local(epoch: float | None, timespec: str = "seconds") -> str:
    """``2024-06-01T08:00:00+08:00`` (local time with its offset); ``-`` when there is no time.
    ``timespec`` as ``datetime.isoformat`` (``milliseconds``, ``microseconds`` ...)."""
    if epoch is None or not math.isfinite(epoch):
        return "-"
    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec=timespec)


def _argparse_type(parse: Callable[[str, str], float], option: str) -> Callable[[str], float]:
    """argparse ``type=``: argparse names the option itself, so the message starts after it."""
    def convert(text: str) -> float:
        try:
            return parse(text, option)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{option}: ")) from None
    return convert


def duration_type(option: str) -> Callable[[str], float]:
    """argparse ``type=`` for a duration option."""
    return _argparse_type(parse_duration, option)


def moment_type(option: str) -> Callable[[str], float]:
    """argparse ``type=`` for a moment option (read when the command line is parsed)."""
    return _argparse_type(parse_moment, option)
