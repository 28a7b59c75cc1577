"""The demo's readable summary and its JSON report."""

from __future__ import annotations

import sqlite3
import textwrap
from pathlib import Path
from typing import Any

from simulator.demo.phase import PhaseResult

# Per category, the signals that arrived at the receiver are listed with their values up to this many
# (location: all); the others by name only, so that every signal that arrived is named.
ARRIVED_PER_CATEGORY = 8
# The summary is read in a terminal: lines of names wrap at this width.
WIDTH = 96


def _fmt(value: float) -> str:
    if value != value:  # NaN
        return "-"
    if abs(value) >= 1e5 or (value != 0 and abs(value) < 1e-3):
        return f"{value:.4g}"
    return f"{value:.3f}".rstrip("0").rstrip(".")


def json_report(phase: PhaseResult, candump_bytes: int) -> dict[str, Any]:
    agent = phase.agent
    pipeline = agent["pipeline"]
    uplink = agent.get("uplink") or {}
    received = phase.receiver
    return {
        "phase": phase.title,
        "sent": {
            "frames": pipeline["frames_in"],
            "batches": uplink.get("acked", 0),
            "samples": pipeline["samples_written"],
            "bytes": pipeline["bytes_written"],
            "batches_written": pipeline["batches_written"],
            "decode": pipeline["decode"],
            "dropped_at_bus": agent.get("dropped_at_bus", {}),
            "candump_text_bytes": candump_bytes,
        },
        "received": {
            "batches": received["batches"],
            "samples": received["samples"],
            "duplicates_dropped": received["duplicates_dropped"],
            "gaps": received["gaps"],
            "corrupt": received["corrupt"],
            "bytes": received["bytes"],
            "by_category": received["by_category"],
            "latency_p50_s": received["latency"]["p50"],
            "latency_p99_s": received["latency"]["p99"],
        },
        "buffer": agent.get("buffer", {}).get("counters", {}),
        "sidecars": agent.get("sidecars", {}),
    }


def arrived_signals(receiver_db: Path) -> list[tuple[str, str, int, Any, Any]]:
    """(category, signal, samples, min, max) of what the reference receiver stored, by category and signal."""
    if not receiver_db.is_file():
        return []
    with sqlite3.connect(f"file:{receiver_db}?mode=ro", uri=True) as db:
        return list(db.execute("SELECT category, key, COUNT(*), MIN(value), MAX(value) FROM samples "
                               "GROUP BY category, key ORDER BY category, COUNT(*) DESC, key"))


def _values(low: Any, high: Any, unit: str) -> str:
    if isinstance(low, (int, float)) and isinstance(high, (int, float)):
        shown = _fmt(low) if low == high else f"{_fmt(low)} .. {_fmt(high)}"
    else:
        shown = str(low) if low == high else f"{low} .. {high}"
    return f"{shown} {unit}".rstrip()


def format_arrived(phase: PhaseResult) -> list[str]:
    """Which signals arrived under this phase's consent, with their values as they arrived (e.g. the
    position at the precision the owner chose)."""
    rows = arrived_signals(phase.workdir / "receiver.sqlite")
    if not rows:
        return ["  signals that arrived: none", *_withheld(phase, set())]
    out = ["  signals that arrived, as the receiver stored them (samples; values):"]
    by_category: dict[str, list[tuple]] = {}
    for row in rows:
        by_category.setdefault(row[0], []).append(row)
    for category, items in by_category.items():
        total = sum(n for _, _, n, _, _ in items)
        out.append(f"    {category} ({len(items)} signals, {total} samples)")
        shown = items if category == "location" else items[:ARRIVED_PER_CATEGORY]
        for _, key, count, low, high in shown:
            unit = phase.signals[key].unit if key in phase.signals else ""
            out.append(f"      {key:<32} {count:>7}  {_values(low, high, unit)}")
        if len(shown) < len(items):
            out += _names(f"also arrived ({len(items) - len(shown)}): ", [key for _, key, *_ in items[len(shown):]])
    out += _withheld(phase, {key for _, key, *_ in rows})
    return out


def _names(lead: str, names: list[str], limit: int | None = None) -> list[str]:
    shown = names[:limit] if limit else names
    text = lead + ", ".join(shown) + (f", ... ({len(names) - len(shown)} more)" if len(shown) < len(names) else "")
    return textwrap.wrap(text, WIDTH, initial_indent="      ", subsequent_indent="        ",
                         break_long_words=False, break_on_hyphens=False)


def _withheld(phase: PhaseResult, arrived: set[str]) -> list[str]:
    """The decoded signals that did not leave the car under this consent, per category."""
    held: dict[str, list[str]] = {}
    for key in sorted(phase.signals):
        if key not in arrived:
            held.setdefault(phase.signals[key].category, []).append(key)
    if not held:
        return []
    out = ["    held back in the car (decoded, not uploaded):"]
    for category, keys in sorted(held.items()):
        out += _names(f"{category} {len(keys)}: ", keys, limit=4)
    return out


def _decode_lines(sent: dict) -> list[str]:
    lines = []
    for bus, counts in sent["decode"].items():
        frames = counts["frames"] or 1
        rejects = ", ".join(_reject(k, v) for k, v in counts.items() if k not in ("frames", "decoded") and v)
        lines.append(f"  bus {bus:<8} {counts['frames']:>7} frames, {counts['decoded'] / frames:6.1%} decoded"
                     + (f" ({rejects})" if rejects else ""))
    return lines


def _reject(kind: str, frames: int) -> str:
    """``unknown_id 31580`` -> ``31580 frames with an unknown id``."""
    return f"{frames} frames with {'an ' if kind == 'unknown_id' else 'a '}{kind.replace('_', ' ')}"


def _top_signals(phase: PhaseResult, top: int) -> list[str]:
    out: list[str] = []
    by_category: dict[str, int] = {}
    for stats in phase.signals.values():
        by_category[stats.category] = by_category.get(stats.category, 0) + 1
    out.append("  signals decoded per category: "
               + ", ".join(f"{k} {v}" for k, v in sorted(by_category.items())))
    # The busiest signals, at most two per message, so one chatty message does not fill the table.
    busiest, per_message = [], {}
    for key, stats in sorted(phase.signals.items(), key=lambda kv: (-kv[1].count, kv[0])):
        message = key.split(".", 1)[0]
        if per_message.get(message, 0) < 2 and stats.maximum != stats.minimum:
            per_message[message] = per_message.get(message, 0) + 1
            busiest.append((key, stats))
    busiest = busiest[:top]
    if busiest:
        width = max(len(k) for k, _ in busiest)
        out.append("  top signals, as decoded in the car (what arrived at the receiver is below)")
        out.append(f"    {'signal':<{width}}  samples        min       mean        max  unit")
        for key, stats in busiest:
            out.append(f"    {key:<{width}} {stats.count:>8} {_fmt(stats.minimum):>10} {_fmt(stats.mean):>10} "
                       f"{_fmt(stats.maximum):>10}  {stats.unit}  [{stats.category}]")
    return out


def format_phase(phase: PhaseResult, candump_bytes: int, top: int = 8, previous: PhaseResult | None = None,
                 previous_index: int = 0) -> str:
    """The phase's summary; what the car decoded is shown once: a later phase on the same log says so."""
    report = json_report(phase, candump_bytes)
    sent, received = report["sent"], report["received"]
    out = [f"== {phase.title} ==", ""]
    out.append("Agent (in the car)")
    same = previous is not None and json_report(previous, candump_bytes)["sent"]["decode"] == sent["decode"]
    if same:
        out.append(f"  decoded the same frames and signals as phase {previous_index} (same log)")
    else:
        out += _decode_lines(sent)
        out += _top_signals(phase, top)
    written = sent["bytes"]
    out.append(f"  batches written {sent['batches_written']} ({sent['samples']} samples, {written} bytes)")
    if written:
        out.append(f"    {candump_bytes / written:.0f}x smaller than the frames as candump text "
                   f"({candump_bytes} bytes)")
    out.append(f"  uploaded (PUBACK) {sent['batches']} batches")
    out.append("")
    out.append("Reference receiver (the in-country cloud)")
    out.append(f"  batches {received['batches']}, samples {received['samples']}, bytes {received['bytes']}, "
               f"duplicates dropped {received['duplicates_dropped']}, gaps {received['gaps']}, "
               f"corrupt {received['corrupt']}")
    out += format_arrived(phase)
    if received["latency_p50_s"] is not None:
        out.append(f"  end-to-end latency p50 {received['latency_p50_s']:.3f} s, p99 {received['latency_p99_s']:.3f} s")
    verdict = "OK: every uploaded batch arrived once, intact" if (
        received["batches"] == sent["batches"] and received["corrupt"] == 0 and received["gaps"] == 0
        and received["samples"] == sent["samples"]) else "MISMATCH between sent and received"
    out.append(f"  {verdict}")
    return "\n".join(out)
