"""Revocation purges: unsent batches of a category that is no longer allowed are deleted.

"Unsent" includes batches handed to the MQTT client whose PUBACK has not come
back: they are deleted from the store and the uplink is told to forget them,
and because they may already be on the broker, the ledger records them as
``may_have_left``.  Batches acknowledged before the purge are uploads (the
ledger has them as such); nothing can call those back.

Order, fail safe (docs/privacy.md, "When the ledger cannot be written"): the
purge happens first and is recorded second.  A ledger that cannot be written
(full disk, a torn line) never stops a purge: the ledger keeps the entry and
writes it as soon as it can, and meanwhile nothing is uploaded (the consent
gate, ``agent.flow.gate``, holds every batch while the ledger is blocked).  A
store that cannot delete (a failing disk) does not let the batches out either:
the gate checks each batch against the live consent right before it is
published and refuses what a revocation covers.

Every purged batch is also cancelled in the uplink (``forget``): one the sender
has read but not yet published (paced by the rate limit, queued, retried) is
never sent.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Collection, Iterable, Sequence
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
    """Purge the store of ``categories``, cancel those batches in the uplink, then write it to the ledger."""
    wanted = frozenset(categories)
    if not wanted:
        return PurgeReport(wanted, (), ())
    # In flight before *and* after the delete: a batch picked up by the sender
    # while the delete ran shows up in the second snapshot.
    in_flight = set(uplink.in_flight_ids()) if uplink is not None else set()
    try:
        purged = tuple(sorted(store.purge(categories=wanted)))
    except (OSError, sqlite3.Error, ValueError) as exc:  # StoreError is a ValueError
        # The batches stay on disk, but none of them leaves: the consent gate refuses them at publish time.
        log.error("purge of %s failed: %s; the uplink refuses those batches when it would send them",
                  ",".join(sorted(wanted)), exc)
        purged = ()
    if uplink is not None:
        in_flight |= set(uplink.in_flight_ids())
        if purged:
            uplink.forget(purged)  # also cancels what the sender has read but not yet published
    report = PurgeReport(wanted, purged, tuple(sorted(set(purged) & in_flight)))
    if ledger is not None and (purged or record_empty):
        record_purge(ledger, report, reason, consent_version)
    return report


def record_purge(ledger: Ledger, report: PurgeReport, reason: str, consent_version: int | None) -> None:
    _record(ledger.record_purge, report.categories, report.purged, reason, consent_version)
    if report.may_have_left:
        _record(ledger.record_may_have_left, report.may_have_left, report.categories,
                "handed to MQTT before the purge, acknowledgement not seen")


def _record(write: Any, *args: Any) -> None:
    """A ledger entry after the fact it records: its failure must not undo or stop what was done."""
    try:
        write(*args)
    except Exception:  # the ledger defers what it cannot write (OSError); anything else is a bug to log
        log.exception("ledger entry %s could not be written", getattr(write, "__name__", "?"))


def consent_change_handler(store: PurgeableStore | None, uplink: InFlightTracker | None, ledger: Ledger | None):
    """A ``policy.on_change`` callback: the purge the change requires first, then the ledger entries."""

    def handle(change: ConsentChange) -> None:
        purging = bool(change.purge) and store is not None
        report = apply_revocation(change.purge, store, uplink, None) if purging else None
        if ledger is not None:
            _record(ledger.record_consent_change, change)
            if report is not None:
                record_purge(ledger, report, change.kind, change.version)

    return handle


def purge_ungranted(policy: ConsentPolicy, store: PurgeableStore, uplink: InFlightTracker | None = None,
                    ledger: Ledger | None = None) -> PurgeReport:
    """At start-up: delete buffered batches of every category not granted now (consent may have been
    revoked, or expired, while the agent was stopped)."""
    now = policy.clock()
    ungranted = frozenset(c for c in ALL_CATEGORIES if not policy.is_granted(c, now))
    return apply_revocation(ungranted, store, uplink, ledger, "not granted at start-up", policy.version,
                            record_empty=False)


__all__ = ["InFlightTracker", "PurgeReport", "PurgeableStore", "apply_revocation", "consent_change_handler",
           "purge_ungranted", "purged_categories"]
