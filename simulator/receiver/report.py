"""What the receiver got: counts, duplicates, gaps, bytes, end-to-end latency.

Gaps are holes in the batch sequence numbers.  A stream's batches are numbered
per (vehicle, boot) by ``stream_seq`` when the header has it, else the boot-wide
``seq`` is used and holes are looked for across the whole boot.  A hole can be
data that never left the vehicle (consent purge, buffer eviction) as well as
data lost on the way: the report shows it, the operator decides.
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
    per_stream = store.query("SELECT vehicle, boot_id, stream, stream_seq FROM batches "
                             "WHERE stream_seq IS NOT NULL ORDER BY vehicle, boot_id, stream, stream_seq")
    groups: dict[tuple, list[int]] = {}
    for vehicle, boot_id, stream, number in per_stream:
        groups.setdefault((vehicle, boot_id, stream), []).append(int(number))
    boot_wide = store.query("SELECT vehicle, boot_id, seq FROM batches WHERE stream_seq IS NULL "
                            "ORDER BY vehicle, boot_id, seq")
    for vehicle, boot_id, number in boot_wide:
        groups.setdefault((vehicle, boot_id, None), []).append(int(number))
    for (vehicle, boot_id, stream), numbers in groups.items():
        for first, last in _missing(numbers):
            gaps.append({"vehicle": vehicle, "boot_id": boot_id, "stream": stream, "first": first, "last": last,
                         "missing": last - first + 1})
    return gaps


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
        "latency": {
            "count": len(latencies),
            "p50": percentile(latencies, 0.50),
            "p99": percentile(latencies, 0.99),
            "max": max(latencies) if latencies else None,
        },
    }


def format_report(report: dict[str, Any]) -> str:
    latency = report["latency"]

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.1f} ms"

    lines = [
        f"batches      {report['batches']}  ({report['bytes']} bytes unique, "
        f"{report['bytes_received']} bytes received)",
        f"samples      {report['samples']}"
        + (f"  ({report['undecoded']} batches not decoded: zstd dictionary missing)" if report["undecoded"] else ""),
        f"duplicates   {report['duplicates_dropped']} dropped",
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
    for gap in report["gap_ranges"][:20]:
        where = f"{gap['vehicle']} boot {gap['boot_id']}" + (f" stream {gap['stream']}" if gap["stream"] else "")
        lines.append(f"gap          {where}: {gap['first']}..{gap['last']}")
    for vehicle, state in report["status"].items():
        lines.append(f"status       {vehicle}: {state}")
    return "\n".join(lines)
