"""The ledger's typed entries: one method per kind, so no caller puts a raw value in by accident.

``agent.ledger.Ledger`` takes these from ``LedgerRecords``; each builds its entry's fields and hands them to
``append`` (which checks every field, writes, or defers while the ledger cannot be written).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from agent.ledger_chain import LedgerEntry, looks_personal, sha256_hex, text_problem


def _sorted_ids(ids: Iterable[int | str]) -> list[int | str]:
    items = list(ids)
    return sorted(items) if all(isinstance(i, int) for i in items) else sorted(items, key=str)


class LedgerRecords:
    """The typed ``record_*`` entries over ``append`` (provided by ``Ledger``)."""

    def append(self, kind: str, fields: dict[str, Any], *, defer: bool = True) -> LedgerEntry | None:
        raise NotImplementedError

    def record_consent_change(self, change: Any) -> LedgerEntry | None:
        detail = {k: v for k, v in change.detail.items() if k in ("expiry", "expires_at", "level", "was", "purpose",
                                                                  "zone", "radius_m", "ended", "revoked",
                                                                  "location_off_at_ignition", "from_version")}
        purpose = detail.get("purpose")
        if isinstance(purpose, str) and text_problem("purpose", purpose) is not None:
            # The owner's words look like a VIN or a position: the change is recorded, those words are not.
            detail["purpose"], detail["purpose_withheld"] = None, looks_personal(purpose) or "too long"
        return self.append("consent_change", {"version": change.version, "change": change.kind,
                                              "source": change.source, "category": change.category,
                                              "detail": detail, "purge": sorted(change.purge)})

    def record_upload(self, batch_id: int | str, payload: bytes, categories: Collection[str], signal_count: int,
                      time_range: tuple[float, float], level: str | None, broker: str, consent_version: int,
                      stream: str = "", bench: bool = False) -> LedgerEntry | None:
        return self.append("upload", {"batch": batch_id, "stream": stream, "categories": sorted(categories),
                                      "signals": signal_count, "first": time_range[0], "last": time_range[1],
                                      "level": level, "bytes": len(payload), "sha256": sha256_hex(payload),
                                      "broker": broker, "consent_version": consent_version, "bench": bench})

    def record_purge(self, categories: Collection[str], batch_ids: Iterable[int | str], reason: str,
                     consent_version: int | None = None, nbytes: int | None = None) -> LedgerEntry | None:
        ids = _sorted_ids(batch_ids)
        return self.append("purge", {"categories": sorted(categories), "batches": len(ids), "batch_ids": ids,
                                     "reason": reason, "consent_version": consent_version, "bytes": nbytes})

    def record_may_have_left(self, batch_ids: Iterable[int | str], categories: Collection[str],
                             reason: str) -> LedgerEntry | None:
        ids = _sorted_ids(batch_ids)
        return self.append("may_have_left", {"batch_ids": ids, "batches": len(ids),
                                             "categories": sorted(categories), "reason": reason})

    def record_remote_refused(self, action: str, category: str | None, reason: str) -> LedgerEntry | None:
        return self.append("remote_refused", {"action": action[:40], "category": category, "reason": reason})

    def record_export(self, **fields: Any) -> LedgerEntry | None:
        return self.append("export", fields)

    def record_forget_me(self, revoked: int, zones: int, trips: int, pseudonym_key: str) -> LedgerEntry | None:
        """The owner handed the car over: consent, zones, owner archive and pseudonym key wiped."""
        return self.append("forget_me", {"revoked": revoked, "zones": zones, "trips": trips,
                                         "pseudonym_key": pseudonym_key}, defer=False)


__all__ = ["LedgerRecords"]
