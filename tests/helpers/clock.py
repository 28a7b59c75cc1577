"""The one fake clock of the test suite: a callable returning ``now``, moved by hand, by ``sleep`` or by a step
on every reading (for code that needs each reading to differ, like the ledger's entry times)."""

from __future__ import annotations


class FakeClock:
    def __init__(self, now: float = 1_750_000_000.0, step: float = 0.0) -> None:
        self.now = now
        self.step = step
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        self.now += self.step
        return self.now

    def clock(self) -> float:
        return self()

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
