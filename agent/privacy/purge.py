"""Revocation purges: unsent batches of a category that is no longer allowed are deleted.

"Unsent" includes batches handed to the MQTT client whose PUBACK has not come
back: they are deleted from the store and the uplink is told to forget them,
and because they may already be on the broker, the ledger records them as
``may_have_left``.  Batches acknowledged before the purge are uploads (the
ledger has them as such); nothing can call those back.

Wiring (see ``docs/privacy.md``)::

    batcher = Batcher(..., sink=consent_guarded_sink(policy, store.add),
                      consent_version=policy.version, bench=policy.bench)
    policy.on_change(consent_change_handler(store, uplink, ledger))      # purge at once, any thread
    def new_version(changes):                                             # pipeline thread, next row
        batcher.flush()            # old-version batches: the guarded sink drops the revoked ones
        batcher.consent_version = privacy_filter.consent_version
    privacy_filter = PrivacyFilter(policy, specs, batcher, pseudonymizer, on_version_change=new_version)
    purge_ungranted(policy, store, uplink, ledger)                        # at start-up

The guarded sink checks a closing batch against the consent *under the
policy's lock*, and every change purges under the same lock, so a batch is
either stored before a revocation (and purged by it) or refused after it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent.ledger import Ledger
from agent.model import ALL_CATEGORIES
from agent.privacy.consent import ConsentChange
from agent.privacy.policy import ConsentPolicy

log = logging.getLogger(__name__)


class PurgeableStore(Protocol):
    """The part of the batch store the purge uses: delete unsent batches holding any of ``categories``."""

    def purge(self, categories: Collection[str]) -> Sequence[int]:
        """Delete them; return the ids of the batches deleted."""
        ...


class InFlightTracker(Protocol):
    """The part of the uplink the purge uses."""

    def in_flight_ids(self) -> Collection[int]: ...

    def forget(self, ids: Collection[int]) -> None:
        """Never resend these batches and ignore their acknowledgements."""
        ...


@dataclass(frozen=True)
class PurgeReport:
    categories: frozenset[str]
    purged: tuple[int, ...]
    may_have_left: tuple[int, ...]


def purged_categories(changes: Iterable[ConsentChange]) -> frozenset[str]:
    """Union of the categories the given changes require purged."""
    out: set[str] = set()
    for change in changes:
        out |= change.purge
    return frozenset(out)


def apply_revocation(categories: Collection[str], store: PurgeableStore, uplink: InFlightTracker | None,
                     ledger: Ledger | None, reason: str = "revoke", consent_version: int | None = None,
                     record_empty: bool = True) -> PurgeReport:
    """Purge the store and the uplink's in-flight window of ``categories`` and write it to the ledger."""
    wanted = frozenset(categories)
    if not wanted:
        return PurgeReport(wanted, (), ())
    # In flight before *and* after the delete: a batch picked up by the sender
    # while the delete ran shows up in the second snapshot.
    in_flight = set(uplink.in_flight_ids()) if uplink is not None else set()
    purged = tuple(sorted(store.purge(categories=wanted)))
    if uplink is not None:
        in_flight |= set(uplink.in_flight_ids())
    may_have_left = tuple(sorted(set(purged) & in_flight))
    if uplink is not None and may_have_left:
        uplink.forget(may_have_left)
    if ledger is not None and (purged or record_empty):
        ledger.record_purge(wanted, purged, reason, consent_version)
        if may_have_left:
            ledger.record_may_have_left(may_have_left, wanted,
                                        "handed to MQTT before the purge, acknowledgement not seen")
    return PurgeReport(wanted, purged, may_have_left)


def consent_change_handler(store: PurgeableStore | None, uplink: InFlightTracker | None, ledger: Ledger | None):
    """A ``policy.on_change`` callback: ledger entry for the change, then the purge it requires."""

    def handle(change: ConsentChange) -> None:
        if ledger is not None:
            ledger.record_consent_change(change)
        if change.purge and store is not None:
            apply_revocation(change.purge, store, uplink, ledger, change.kind, change.version)

    return handle


def purge_ungranted(policy: ConsentPolicy, store: PurgeableStore, uplink: InFlightTracker | None = None,
                    ledger: Ledger | None = None) -> PurgeReport:
    """At start-up: delete buffered batches of every category not granted now (consent may have been
    revoked, or expired, while the agent was stopped)."""
    now = policy.clock()
    ungranted = frozenset(c for c in ALL_CATEGORIES if not policy.is_granted(c, now))
    return apply_revocation(ungranted, store, uplink, ledger, "not granted at start-up", policy.version,
                            record_empty=False)


def batch_allowed(policy: ConsentPolicy, categories: Collection[str], consent_version: int) -> bool:
    """Whether a batch made under ``consent_version`` with these categories may still be stored for upload:
    every category granted now, and no change since then asked to purge any of them.  Call it holding
    ``policy.lock`` (``consent_guarded_sink`` does) to make check-and-store atomic."""
    if policy.bench:
        return True
    view, now = policy.view, policy.clock()
    if not categories or not all(view.is_granted(c, now) for c in categories):
        return False
    if consent_version == view.version:
        return True
    changes = policy.changes_since(consent_version)
    expected = consent_version
    for change in changes:
        # A "reload" (state written by another process) may cover several versions at once.
        start = change.detail.get("from_version", change.version - 1) if change.kind == "reload" else \
            change.version - 1
        if start != expected:
            return False  # history does not reach back that far: fail closed
        if change.purge.intersection(categories):
            return False
        expected = change.version
    return expected == view.version


def consent_guarded_sink(policy: ConsentPolicy, sink: Callable[[Any], Any]) -> Callable[[Any], None]:
    """Wrap the batch store's ``add`` for the batcher: batches no longer allowed are dropped, not stored.
    Works on anything with a ``header`` holding ``categories`` and ``consent_version`` (``EncodedBatch``)."""

    def put(batch: Any) -> None:
        header = batch.header
        with policy.lock:
            if not batch_allowed(policy, header.get("categories") or (), int(header.get("consent_version", -1))):
                log.info("batch %s/%s dropped: consent for %s changed since it was made", header.get("stream"),
                         header.get("seq"), ",".join(header.get("categories") or ()))
                return
            sink(batch)

    return put


__all__ = ["InFlightTracker", "PurgeReport", "PurgeableStore", "apply_revocation", "batch_allowed",
           "consent_change_handler", "consent_guarded_sink", "purge_ungranted", "purged_categories"]
