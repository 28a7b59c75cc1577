"""Completeness manifest of a snapshot: the signals the DBCs define vs the signals recorded.

For each signal of the snapshot's categories the manifest says how many
samples were recorded and when the first and last arrived; signals that the
DBCs define but that never appeared in the window are listed as missing, so
whoever reads the snapshot knows what it cannot show (e.g. the airbag message
was not on the bus).  Raw frames are counted per bus.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import can

from agent.model import DecodedFrame, SignalSpec


def completeness(specs: Mapping[str, SignalSpec], categories: Iterable[str], decoded: Iterable[DecodedFrame],
                 raw_frames: Iterable[tuple[str, can.Message]]) -> dict[str, Any]:
    wanted = frozenset(categories)
    listed = {key: spec for key, spec in specs.items() if spec.category in wanted}
    counts: dict[str, int] = {}
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for frame in decoded:
        prefix = frame.message + "."
        for name in frame.raw:
            key = prefix + name
            counts[key] = counts.get(key, 0) + 1
            first.setdefault(key, frame.timestamp)
            last[key] = frame.timestamp
    frames_per_bus: dict[str, int] = {}
    for bus, _msg in raw_frames:
        frames_per_bus[bus] = frames_per_bus.get(bus, 0) + 1
    signals = []
    for key in sorted(listed):
        spec = listed[key]
        entry: dict[str, Any] = {"signal": key, "vss": spec.vss_path, "category": spec.category,
                                 "unit": spec.unit, "samples": counts.get(key, 0)}
        if key in first:
            entry["first"] = first[key]
            entry["last"] = last[key]
        signals.append(entry)
    missing = [key for key in sorted(listed) if key not in counts]
    defined_per_category = {category: sum(1 for s in listed.values() if s.category == category)
                            for category in sorted(wanted)}
    recorded_per_category = {category: sum(1 for k in counts if k in listed and listed[k].category == category)
                             for category in sorted(wanted)}
    return {
        "categories": sorted(wanted),
        "defined_signals": len(specs),
        "defined_in_categories": len(listed),
        "recorded_signals": len([key for key in counts if key in listed]),
        "defined_per_category": defined_per_category,
        "recorded_per_category": recorded_per_category,
        "missing": missing,
        "samples": sum(counts.values()),
        "raw_frames": sum(frames_per_bus.values()),
        "raw_frames_per_bus": dict(sorted(frames_per_bus.items())),
        "signals": signals,
    }
