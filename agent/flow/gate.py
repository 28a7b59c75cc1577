"""The consent gate: the two doors a batch passes on its way out, both checked under the policy's lock.

* ``admit`` - into the store, for the one store writer (``agent.flow.writer``);
* ``release`` - onto the network, for the uplink, immediately before each publish.

Both ask ``agent.privacy.decision.batch_allowed`` holding ``policy.lock``, the
lock every consent change (and so every revocation purge) runs under: a batch
is either stored/published before a revocation - and then purged by it, or
recorded as possibly gone - or refused after it.  A batch refused at the
network door was made under a consent since narrowed: it is purged there and
the ledger says so.

The gate also keeps the promise that nothing leaves unrecorded: while the
ledger cannot be written (full disk, I/O error) ``release`` holds every batch,
and ``record_delivery`` tells the uplink whether an acknowledged upload reached
the ledger (if not, the uplink keeps it in the store until it has).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from agent.privacy.decision import batch_allowed
from agent.uplink.ports import Release

log = logging.getLogger(__name__)


class PolicyLike(Protocol):
    lock: Any
    bench: bool

    def level(self, category: str) -> str | None: ...


class LedgerLike(Protocol):
    @property
    def blocked(self) -> bool: ...

    def flush_deferred(self) -> bool: ...

    def record_upload(self, *args: Any, **kwargs: Any) -> Any: ...

    def record_purge(self, *args: Any, **kwargs: Any) -> Any: ...


class StoreLike(Protocol):
    def purge_ids(self, ids: Any) -> list[int]: ...


@dataclass
class GateCounters:
    refused_at_store: int = 0
    refused_at_send: int = 0
    held_for_ledger: int = 0
    unrecorded_uploads: int = 0  # acknowledged, but the ledger could not take the entry yet

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


def _identity(batch: Any) -> tuple[list[str], int]:
    header = getattr(batch, "header", None) or {}
    categories = header.get("categories") or list(getattr(batch, "categories", ()) or ())
    return list(categories), int(header.get("consent_version", -1))


class ConsentGate:
    def __init__(self, policy: PolicyLike, ledger: LedgerLike | None = None, store: StoreLike | None = None) -> None:
        self.policy = policy
        self.ledger = ledger
        self.store = store
        self.counters = GateCounters()
        self._lock = threading.Lock()  # counters only

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self.counters, name, getattr(self.counters, name) + 1)

    # -- into the store -------------------------------------------------------------
    def admit(self, batch: Any, add: Any) -> int | None:
        """``add(batch)`` when consent still allows the batch (returns its id); None when refused."""
        categories, version = _identity(batch)
        with self.policy.lock:
            if not batch_allowed(self.policy, categories, version):
                self._count("refused_at_store")
                log.info("batch %s/%s not stored: consent for %s changed since it was made",
                         batch.header.get("stream"), batch.header.get("seq"), ",".join(categories))
                return None
            return add(batch)

    # -- onto the network ---------------------------------------------------------------
    def ready(self) -> bool:
        """Whether uploads may go on: the ledger takes entries (deferred ones are written first)."""
        ledger = self.ledger
        return ledger is None or not ledger.blocked or ledger.flush_deferred()

    def release(self, batch: Any, publish: Any) -> Release:
        """Check ``batch`` against the live consent and the ledger, then ``publish()`` under the policy lock."""
        categories, version = _identity(batch)
        with self.policy.lock:
            if not self.ready():
                self._count("held_for_ledger")
                return Release.HELD
            if not batch_allowed(self.policy, categories, version):
                self._refuse(batch, categories)
                return Release.REFUSED
            return Release.SENT if publish() else Release.NOT_SENT

    def _refuse(self, batch: Any, categories: list[str]) -> None:
        self._count("refused_at_send")
        log.info("batch %s not published: consent for %s changed since it was made; purged",
                 batch.id, ",".join(categories))
        purged = self.store.purge_ids([batch.id]) if self.store is not None else []
        if self.ledger is not None and purged:
            self.ledger.record_purge(frozenset(categories), purged, "consent changed before publish",
                                     getattr(self.policy, "version", None))

    # -- the owner's record -------------------------------------------------------------
    def record_delivery(self, batch: Any, broker: str) -> bool:
        """Write the upload to the ledger; False when it could not be written yet (kept for later)."""
        ledger = self.ledger
        if ledger is None:
            return True
        header = batch.header
        level = self.policy.level("location") if "location" in batch.categories else None
        entry = ledger.record_upload(batch.id, bytes(batch.payload), batch.categories, int(header.get("samples", 0)),
                                     (header.get("t_min"), header.get("t_max")), level, broker,
                                     int(header.get("consent_version", 0)), stream=batch.stream,
                                     bench=bool(header.get("bench", False)))
        if entry is None:
            self._count("unrecorded_uploads")
            return False
        return True


__all__ = ["ConsentGate", "GateCounters", "Release"]
