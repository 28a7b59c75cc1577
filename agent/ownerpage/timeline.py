"""What left my car, per day, from the ledger: batches, values, categories, location level, bytes; purges;
refused network commands; consent changes; exports.  Words for people, not per-batch jargon."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from agent.ledger import LedgerEntry
from agent.privacy.wording import describe_change


@dataclass
class Day:
    date: str  # local date, ISO (2026-12-03)
    batches: int = 0
    values: int = 0
    bytes: int = 0
    categories: set[str] = field(default_factory=set)
    levels: set[str] = field(default_factory=set)
    brokers: set[str] = field(default_factory=set)
    purged_batches: int = 0
    refused: list[str] = field(default_factory=list)
    events: list[tuple[str, str]] = field(default_factory=list)  # (local time, what happened)

    @property
    def sent_anything(self) -> bool:
        return self.batches > 0

    def summary(self) -> str:
        if not self.batches:
            return "nothing left the car"
        level = ", ".join(sorted(self.levels)) or "exact"
        return (f"{self.batches} batch{'es' if self.batches != 1 else ''} with {self.values:,} values of "
                f"{', '.join(sorted(self.categories)) or 'no category'} left the car "
                f"({_size(self.bytes)}; location level {level})")


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} GB"


def _local(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch).astimezone()


def timeline(entries: Iterable[LedgerEntry]) -> list[Day]:
    """Days, newest first; each with its totals and its notable events in time order."""
    days: dict[str, Day] = {}
    for entry in entries:
        when = _local(entry.time)
        day = days.setdefault(when.date().isoformat(), Day(when.date().isoformat()))
        clock = when.strftime("%H:%M")
        f = entry.fields
        if entry.kind == "upload":
            day.batches += 1
            day.values += int(f.get("signals") or 0)
            day.bytes += int(f.get("bytes") or 0)
            day.categories.update(f.get("categories") or ())
            if f.get("level"):
                day.levels.add(str(f["level"]))
            day.brokers.add(str(f.get("broker") or "?"))
        elif entry.kind == "purge":
            day.purged_batches += int(f.get("batches") or 0)
            day.events.append((clock, f"deleted {f.get('batches', 0)} unsent batch(es) of "
                                      f"{', '.join(f.get('categories') or ()) or 'data'} ({f.get('reason', '')})"))
        elif entry.kind == "remote_refused":
            text = f"refused a network command: {f.get('action')} {f.get('category') or ''} ({f.get('reason')})"
            day.refused.append(text)
            day.events.append((clock, text))
        elif entry.kind == "consent_change":
            day.events.append((clock, describe_change(f.get("version", 0), f.get("change", "?"), f.get("category"),
                                                      f.get("source", "?"), f.get("detail") or {})))
        elif entry.kind == "export":
            day.events.append((clock, f"you exported {f.get('export')}: {f.get('samples', 0)} samples"))
        elif entry.kind == "may_have_left":
            day.events.append((clock, f"{f.get('batches', 0)} batch(es) may have left before a revocation "
                                      f"({f.get('reason', '')})"))
        elif entry.kind == "forget_me":
            day.events.append((clock, "the owner's data was wiped (forget me); a new pseudonym from then on"))
    return sorted(days.values(), key=lambda d: d.date, reverse=True)
