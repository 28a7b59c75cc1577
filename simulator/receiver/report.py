"""What the receiver got: counts, duplicates, conflicts, gaps, bytes, end-to-end latency.

A duplicate is a batch that came again with the same payload (dropped); a
conflict is another payload under the identity of a stored batch (kept aside in
the ``conflicts`` table, listed here: a forgery, or a sender that reused numbers).

Gaps are holes in the batch sequence numbers.  A stream's batches are numbered
per (vehicle, store epoch, boot) by ``stream_seq`` when the header has it, else
the boot-wide ``seq`` is used and holes are looked for across the whole boot.  A
hole can be data that never left the vehicle (consent purge, buffer eviction) as
well as data lost on the way: the report shows it, the operator decides.  Gaps,
like every count here, are computed from the stored batches in the database, never
from one process's memory: receivers sharing a database (shared subscription
members each storing part of a stream) report the same holes, and none that
another member filled.

Ledger anchors: the ledger seq kept per vehicle (the head its online status
published last, never going backwards) and the anchors that would have moved it
back or changed its signing key (``ledger_anchor_conflicts``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

from simulator.receiver.store import ReceiverStore


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile (no interpolation: every reported value was measured)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def _missing(numbers: list[int]) -> list[tuple[int, int]]:
    """Ranges (first, last) of integers missing between min and max of ``numbers``."""
    ranges = []
    for previous, current in itertools.pairwise(numbers):
        if current > previous + 1:
            ranges.append((previous + 1, current - 1))
    return ranges


def find_gaps(store: ReceiverStore) -> list[dict[str, Any]]:
    gaps: list[dict[str, Any]] = []
    per_stream = store.query("SELECT vehicle, store_epoch, boot_id, stream, stream_seq FROM batches "
                             "WHERE stream_seq IS NOT NULL ORDER BY vehicle, store_epoch, boot_id, stream, stream_seq")
    groups: dict[tuple, list[int]] = {}
    for vehicle, epoch, boot_id, stream, number in per_stream:
        groups.setdefault((vehicle, epoch, boot_id, stream), []).append(int(number))
    boot_wide = store.query("SELECT vehicle, store_epoch, boot_id, seq FROM batches WHERE stream_seq IS NULL "
                            "ORDER BY vehicle, store_epoch, boot_id, seq")
    for vehicle, epoch, boot_id, number in boot_wide:
        groups.setdefault((vehicle, epoch, boot_id, None), []).append(int(number))
    for (vehicle, epoch, boot_id, stream), numbers in groups.items():
        for first, last in _missing(numbers):
            gaps.append({"vehicle": vehicle, "store_epoch": epoch, "boot_id": boot_id, "stream": stream,
                         "first": first, "last": last, "missing": last - first + 1})
    return gaps


def conflict_details(store: ReceiverStore) -> list[dict[str, Any]]:
    return [{"vehicle": vehicle, "store_epoch": epoch, "boot_id": boot_id, "seq": seq, "stream": stream,
             "topic": topic, "bytes": size, "payload_sha256": sha, "stored_sha256": stored, "repeats": repeats,
             "payload_kept": bool(kept)}
            for vehicle, epoch, boot_id, seq, stream, topic, size, sha, stored, repeats, kept in store.query(
                "SELECT vehicle, store_epoch, boot_id, seq, stream, topic, bytes, payload_sha256, stored_sha256, "
                "repeats, payload IS NOT NULL FROM conflicts ORDER BY id")]


def anchor_summary(store: ReceiverStore) -> dict[str, Any]:
    kept = {vehicle: int(seq) for vehicle, seq in store.query(
        "SELECT vehicle, seq FROM ledger_anchors ORDER BY vehicle")}
    conflicts = [{"vehicle": vehicle, "reason": reason, "kept_seq": kept_seq, "got_seq": got_seq}
                 for vehicle, reason, kept_seq, got_seq in store.query(
                     "SELECT vehicle, reason, kept_seq, got_seq FROM ledger_anchor_conflicts ORDER BY id")]
    return {"ledger_anchors": kept, "ledger_anchor_conflicts": len(conflicts),
            "ledger_anchor_conflict_details": conflicts,
            "ledger_anchors_invalid": store.counter("ledger_anchors_invalid")}


def build_report(store: ReceiverStore) -> dict[str, Any]:
    batches, samples, unique_bytes, undecoded = store.query(
        "SELECT COUNT(*), COALESCE(SUM(samples), 0), COALESCE(SUM(bytes), 0), COALESCE(SUM(1 - decoded), 0) "
        "FROM batches")[0]
    latencies = [row[0] for row in store.query("SELECT latency FROM batches WHERE latency IS NOT NULL")]
    by_category = dict(store.query("SELECT category, COUNT(*) FROM samples GROUP BY category ORDER BY category"))
    by_stream = {stream: {"batches": count, "samples": total}
                 for stream, count, total in store.query(
                     "SELECT stream, COUNT(*), SUM(samples) FROM batches GROUP BY stream ORDER BY stream")}
    corrupt = [{"vehicle": vehicle, "topic": topic, "bytes": size, "reason": reason}
               for vehicle, topic, size, reason in store.query(
                   "SELECT vehicle, topic, bytes, reason FROM corrupt ORDER BY id")]
    gaps = find_gaps(store)
    vehicles = [row[0] for row in store.query("SELECT DISTINCT vehicle FROM batches ORDER BY vehicle")]
    status = {vehicle: state for vehicle, state in store.query("SELECT vehicle, state FROM status ORDER BY vehicle")}
    return {
        "batches": int(batches),
        "samples": int(samples),
        "undecoded": int(undecoded),
        "duplicates_dropped": store.counter("duplicates"),
        "conflicts": store.counter("conflicts"),
        "conflict_details": conflict_details(store),
        "corrupt": len(corrupt),
        "corrupt_details": corrupt,
        "gaps": sum(gap["missing"] for gap in gaps),
        "gap_ranges": gaps,
        "bytes": int(unique_bytes),
        "bytes_received": store.counter("bytes_received"),
        "by_category": by_category,
        "by_stream": by_stream,
        "vehicles": vehicles,
        "status": status,
        **anchor_summary(store),
        "latency": {
            "count": len(latencies),
            "p50": percentile(latencies, 0.50),
            "p99": percentile(latencies, 0.99),
            "max": max(latencies) if latencies else None,
        },
    }


def _identity(item: dict[str, Any]) -> str:
    epoch = f" epoch {item['store_epoch']}" if item.get("store_epoch") else ""
    seq = f" seq {item['seq']}" if "seq" in item else ""
    return f"{item['vehicle']}{epoch} boot {item['boot_id']}{seq}"


def format_report(report: dict[str, Any]) -> str:
    latency = report["latency"]

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.1f} ms"

    lines = [
        f"batches      {report['batches']}  ({report['bytes']} bytes unique, "
        f"{report['bytes_received']} bytes received)",
        f"samples      {report['samples']}"
        + (f"  ({report['undecoded']} batches not decoded: zstd dictionary missing)" if report["undecoded"] else ""),
        f"duplicates   {report['duplicates_dropped']} dropped (same identity, same payload)",
        f"conflicts    {report['conflicts']}"
        + ("  (same identity, other payload: kept aside, the first one stays stored)" if report["conflicts"] else ""),
        f"corrupt      {report['corrupt']}",
        f"gaps         {report['gaps']} missing batches in {len(report['gap_ranges'])} holes",
        f"latency      p50 {seconds(latency['p50'])}  p99 {seconds(latency['p99'])}  "
        f"max {seconds(latency['max'])}  (n={latency['count']})",
    ]
    for stream, counts in report["by_stream"].items():
        lines.append(f"stream       {stream}: {counts['batches']} batches, {counts['samples']} samples")
    for category, count in report["by_category"].items():
        lines.append(f"category     {category}: {count} samples")
    for item in report["corrupt_details"][:20]:
        lines.append(f"corrupt      {item['topic']} ({item['bytes']} bytes): {item['reason']}")
    for item in report["conflict_details"][:20]:
        lines.append(f"conflict     {_identity(item)} on {item['topic']}: {item['bytes']} bytes, SHA-256 "
                     f"{item['payload_sha256'][:16]}... (stored {item['stored_sha256'][:16]}...)"
                     + (f", {item['repeats']} times" if item["repeats"] > 1 else "")
                     + ("" if item["payload_kept"] else ", payload not kept (conflict payload limit)"))
    for gap in report["gap_ranges"][:20]:
        where = _identity(gap) + (f" stream {gap['stream']}" if gap["stream"] else "")
        lines.append(f"gap          {where}: {gap['first']}..{gap['last']}")
    for vehicle, state in report["status"].items():
        lines.append(f"status       {vehicle}: {state}")
    for vehicle, seq in report["ledger_anchors"].items():
        lines.append(f"anchor       {vehicle}: ledger seq {seq}")
    lines.append(f"anchor conflicts {report['ledger_anchor_conflicts']}"
                 + ("  (a published ledger head went back or changed key: the kept one stays)"
                    if report["ledger_anchor_conflicts"] else "")
                 + (f"; {report['ledger_anchors_invalid']} malformed anchors ignored"
                    if report["ledger_anchors_invalid"] else ""))
    for item in report["ledger_anchor_conflict_details"][:20]:
        lines.append(f"anchor conflict {item['vehicle']}: {item['reason']} (kept seq {item['kept_seq']}, "
                     f"got seq {item['got_seq']})")
    return "\n".join(lines)
