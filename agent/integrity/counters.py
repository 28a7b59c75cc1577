"""Rolling counters: each frame's counter should be the previous one + 1, modulo 2**length.

What a step from one frame to the next of the same message on the same bus is:

* ``ok``: the value is the previous one + 1 (wrapping to 0 after the top value);
* ``repeat``: the same value again (a sender that sent a frame twice, or a stuck ECU);
* ``jump``: any other value: frames lost in between, or a counter that skipped;
* ``resync``: no judgement: the first frame of the message, the first after more than ``gap_seconds``
  without one (the sender was off, or the logger was), or the first after the clock stepped back by more
  than ``reset_seconds`` (a logger clock reset).  Such a step starts the sequence again.

Small steps back in time are taken as they come: loggers interleave buses and stamp frames out of order by
milliseconds.
"""

from __future__ import annotations

from itertools import pairwise

OK = "ok"
REPEAT = "repeat"
JUMP = "jump"
RESYNC = "resync"

GAP_SECONDS = 2.0  # longer than the slowest period of messages that carry a counter (1 Hz)
RESET_SECONDS = 1.0  # the same threshold the replay uses for a logger clock reset


class CounterTrack:
    """The last value and time of one counter of one message on one bus."""

    __slots__ = ("gap_seconds", "last_time", "modulus", "previous", "reset_seconds")

    def __init__(self, modulus: int, gap_seconds: float = GAP_SECONDS, reset_seconds: float = RESET_SECONDS) -> None:
        if modulus < 2:
            raise ValueError(f"a rolling counter needs at least 2 values, got modulus {modulus}")
        self.modulus = modulus
        self.gap_seconds = gap_seconds
        self.reset_seconds = reset_seconds
        self.previous: int | None = None
        self.last_time = 0.0

    def step(self, value: int, timestamp: float) -> str:
        """Judge ``value`` seen at ``timestamp``; one of OK, REPEAT, JUMP, RESYNC."""
        previous, elapsed = self.previous, timestamp - self.last_time
        self.previous, self.last_time = value, timestamp
        if previous is None or elapsed > self.gap_seconds or elapsed < -self.reset_seconds:
            return RESYNC
        if value == previous:
            return REPEAT
        return OK if value == (previous + 1) % self.modulus else JUMP


def step_share(values: list[int], modulus: int) -> tuple[int, int]:
    """(steps of +1 modulo ``modulus``, steps) over consecutive values: how counter-like a sequence is."""
    good = sum(1 for before, after in pairwise(values) if after == (before + 1) % modulus)
    return good, max(len(values) - 1, 0)
