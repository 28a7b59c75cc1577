"""The uplink's bookkeeping per batch, and its counters (thread-safe).

What it remembers, by store batch id:

* sending   - between ``pending()`` and the publish bookkeeping: may be leaving now;
* published - sent at least once and not acknowledged (to count re-sends, bytes acked);
* held      - the broker refused it (failure reason code): not offered again until a time;
* forgotten - purged while in flight (consent revocation): never re-sent, PUBACK ignored.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection

# Bound of the per-batch sets: purged batches may never get a PUBACK.
MAX_TRACKED = 100_000

COUNTERS = ("sent", "acked", "rejected", "resent", "forgotten", "bytes_sent", "bytes_acked", "connects",
            "disconnects", "connect_failures")


class DeliveryBook:
    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._sending: set[int] = set()
        self._published: dict[int, int] = {}  # batch id -> payload size
        self._held: dict[int, float] = {}  # batch id -> monotonic time it may go again
        self._forgotten: set[int] = set()
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.last_puback_time: float | None = None

    def count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.counters[name] += amount

    # -- sending ---------------------------------------------------------------
    def begin_send(self, batch_id: int) -> bool:
        """False when the batch was forgotten after pending() returned it: do not send."""
        with self._lock:
            if batch_id in self._forgotten:
                return False
            self._sending.add(batch_id)
            return True

    def end_send(self, batch_id: int, size: int, handed: bool) -> None:
        with self._lock:
            self._sending.discard(batch_id)
            if not handed:
                return
            self.counters["sent"] += 1
            self.counters["bytes_sent"] += size
            if batch_id in self._published:
                self.counters["resent"] += 1
            elif len(self._published) >= MAX_TRACKED:
                self._published.clear()
            self._published[batch_id] = size

    def hold(self, batch_id: int, seconds: float) -> None:
        with self._lock:
            self._held[batch_id] = self._monotonic() + seconds

    # -- acknowledgements ---------------------------------------------------------
    def take_forgotten(self, batch_id: int) -> bool:
        """True (and the batch is dropped from the book) when its PUBACK must be ignored."""
        with self._lock:
            if batch_id not in self._forgotten:
                return False
            self._forgotten.discard(batch_id)
            self._published.pop(batch_id, None)
            return True

    def delivered(self, batch_id: int, when: float) -> None:
        with self._lock:
            self.counters["acked"] += 1
            self.counters["bytes_acked"] += self._published.pop(batch_id, 0)
            self.last_puback_time = when

    def rejected(self, batch_id: int, retry_after: float) -> None:
        with self._lock:
            self.counters["rejected"] += 1
            self._held[batch_id] = self._monotonic() + retry_after

    # -- purge ------------------------------------------------------------------
    def forget(self, batch_ids: Collection[int]) -> None:
        with self._lock:
            if len(self._forgotten) >= MAX_TRACKED:
                # Ids are never reused and purged batches are gone from the store: old entries are moot.
                self._forgotten.clear()
            self._forgotten.update(batch_ids)
            self.counters["forgotten"] += len(batch_ids)
            for batch_id in batch_ids:
                self._held.pop(batch_id, None)

    # -- queries -------------------------------------------------------------------
    def excluded(self) -> set[int]:
        """Batches the store must not hand out now (held or forgotten); expired holds end here."""
        now = self._monotonic()
        with self._lock:
            for batch_id in [b for b, until in self._held.items() if until <= now]:
                del self._held[batch_id]
            return set(self._held) | self._forgotten

    def sending(self) -> set[int]:
        with self._lock:
            return set(self._sending)

    def forgotten(self) -> set[int]:
        with self._lock:
            return set(self._forgotten)

    def snapshot(self) -> dict:
        with self._lock:
            return {**self.counters, "held": len(self._held), "last_puback_time": self.last_puback_time}
