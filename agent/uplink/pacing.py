"""Reconnect backoff (exponential with jitter) and the optional byte-rate limit."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delay before the next connection attempt: ``min * 2**failures`` capped at ``max``,
    then scaled by a random factor in [0.5, 1.0] so a fleet that lost the same broker
    does not come back in lock step."""

    minimum: float
    maximum: float
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.minimum * (2 ** min(self.failures, 32)))
        self.failures += 1
        return ceiling * self.rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.failures = 0


@dataclass
class ByteRateLimiter:
    """Token bucket over payload bytes; ``rate`` 0 means unlimited.

    The bucket holds at most one second of bytes.  A batch larger than that is
    sent when the bucket is full and leaves it in debt, so big batches are
    slowed down, not stuck forever.
    """

    rate: int
    monotonic: Callable[[], float] = time.monotonic
    _tokens: float = 0.0
    _last: float | None = None

    def delay_for(self, size: int) -> float:
        """Seconds to wait before ``size`` bytes may go; 0 means go now (and they are charged)."""
        if self.rate <= 0:
            return 0.0
        now = self.monotonic()
        if self._last is None:
            self._tokens = float(self.rate)
        else:
            self._tokens = min(float(self.rate), self._tokens + (now - self._last) * self.rate)
        self._last = now
        needed = min(float(size), float(self.rate))
        if self._tokens >= needed:
            self._tokens -= size
            return 0.0
        return (needed - self._tokens) / self.rate
