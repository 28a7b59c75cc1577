"""The one way into the store: every batch - CAN telemetry, incident parts, camera events - is written here.

``StoreWriter`` is the only code that calls the store's ``add``.  It

* numbers batches (``numbers(stream)``: the store's epoch, the boot, the
  boot-wide and the per-stream sequence numbers - ``agent.batch.identity``);
* admits each batch through the consent gate (``agent.flow.gate``), which
  checks it against the live consent under the policy lock;
* keeps what the store refused (full disk, I/O error) in a bounded queue, in
  order, and retries it on every ``retry()`` (the pipeline's tick); past the
  bound the oldest waiting batch is dropped and counted.  A waiting batch goes
  through the gate again when it is retried, so a revocation in between still
  stops it;
* tells its listeners (the uplink's wake-up) after each commit.

Used from the pipeline thread only (the store itself is thread-safe).
"""

from __future__ import annotations

import logging
import sqlite3
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from agent.batch.format import EncodedBatch
from agent.batch.identity import BatchNumbers
from agent.buffer.schema import StoreError

log = logging.getLogger(__name__)

# Batches kept in memory while the store refuses writes (a batch is at most max_bytes, 64 KiB by default).
MAX_WAITING = 64
StoredListener = Callable[[int, EncodedBatch], None]


class StoreLike(Protocol):
    epoch: str

    def add(self, batch: EncodedBatch) -> int: ...

    def next_seq(self, boot_id: str) -> int: ...

    def next_stream_seq(self, boot_id: str, stream: str) -> int: ...


class GateLike(Protocol):
    def admit(self, batch: EncodedBatch, add: Callable[[EncodedBatch], int]) -> int | None: ...


@dataclass
class WriterCounters:
    batches_written: int = 0
    samples_written: int = 0
    bytes_written: int = 0
    refused_by_consent: int = 0
    store_errors: int = 0  # failed attempts (each retry of a waiting batch counts again)
    batches_dropped: int = 0  # given up past MAX_WAITING

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


class StoreWriter:
    def __init__(self, store: StoreLike, gate: GateLike, boot_id: str, max_waiting: int = MAX_WAITING) -> None:
        self.store = store
        self.gate = gate
        self.boot_id = boot_id
        self.max_waiting = max_waiting
        self.counters = WriterCounters()
        self.listeners: list[StoredListener] = []
        self._waiting: deque[EncodedBatch] = deque()
        self._failing = False

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def numbers(self, stream: str) -> BatchNumbers:
        """The identity of the next batch of ``stream``: unique for ever (see ``agent.batch.identity``)."""
        store = self.store
        return BatchNumbers(store.epoch, self.boot_id, store.next_seq(self.boot_id),
                            store.next_stream_seq(self.boot_id, stream))

    def write(self, batch: EncodedBatch) -> None:
        """Commit ``batch`` (or keep it for a retry); never raises for a store that refuses writes."""
        if self._waiting:  # behind others waiting: keep the order
            self._wait(batch)
            self.retry()
        elif not self._try(batch):
            self._wait(batch)

    def retry(self) -> None:
        """Write what waits, oldest first, until the store refuses again."""
        while self._waiting and self._try(self._waiting[0]):
            self._waiting.popleft()

    def _wait(self, batch: EncodedBatch) -> None:
        if len(self._waiting) >= self.max_waiting:
            lost = self._waiting.popleft()
            self.counters.batches_dropped += 1
            log.error("batch %s/%s dropped: %d batches already wait for the store", lost.stream, lost.seq,
                      self.max_waiting)
        self._waiting.append(batch)

    def _try(self, batch: EncodedBatch) -> bool:
        """True when the batch is settled (stored, or refused by consent); False to keep it for a retry."""
        try:
            batch_id = self.gate.admit(batch, self.store.add)
        except (OSError, sqlite3.Error, StoreError) as exc:
            self.counters.store_errors += 1
            # One line when storing starts failing (and when it recovers), not one per batch per tick:
            # a full disk must not also fill the journal.
            if not self._failing:
                log.warning("batch %s/%s not stored, will retry: %s", batch.stream, batch.seq, exc)
            self._failing = True
            return False
        if self._failing:
            log.warning("storing batches works again (%d waiting)", len(self._waiting))
            self._failing = False
        if batch_id is None:
            self.counters.refused_by_consent += 1
            return True
        counters = self.counters
        counters.batches_written += 1
        counters.samples_written += batch.samples
        counters.bytes_written += len(batch.payload)
        for listener in self.listeners:
            listener(batch_id, batch)
        return True


__all__ = ["MAX_WAITING", "StoreWriter", "WriterCounters"]
