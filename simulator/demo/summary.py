"""The demo's readable summary and its JSON report."""

from __future__ import annotations

from typing import Any

from simulator.demo.phase import PhaseResult


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


def format_phase(phase: PhaseResult, candump_bytes: int, top: int = 8) -> str:
    report = json_report(phase, candump_bytes)
    sent, received = report["sent"], report["received"]
    out = [f"== {phase.title} ==", ""]
    out.append("Agent (in the car)")
    for bus, counts in sent["decode"].items():
        frames = counts["frames"] or 1
        rejects = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()
                            if k not in ("frames", "decoded") and v)
        out.append(f"  bus {bus:<8} {counts['frames']:>7} frames, {counts['decoded'] / frames:6.1%} decoded"
                   + (f" ({rejects})" if rejects else ""))
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
        out.append("  top signals, as decoded in the car (shown here, on the owner's side; not what was uploaded)")
        out.append(f"    {'signal':<{width}}  samples        min       mean        max  unit")
        for key, stats in busiest:
            out.append(f"    {key:<{width}} {stats.count:>8} {_fmt(stats.minimum):>10} {_fmt(stats.mean):>10} "
                       f"{_fmt(stats.maximum):>10}  {stats.unit}  [{stats.category}]")
    written = sent["bytes"]
    ratio = f"{candump_bytes / written:.0f}x smaller than" if written else "nothing, vs"
    out.append(f"  batches written {sent['batches_written']} ({sent['samples']} samples, {written} bytes: "
               f"{ratio} the frames as candump text, {candump_bytes} bytes)")
    out.append(f"  uploaded (PUBACK) {sent['batches']} batches")
    out.append("")
    out.append("Reference receiver (the in-country cloud)")
    out.append(f"  batches {received['batches']}, samples {received['samples']}, bytes {received['bytes']}, "
               f"duplicates dropped {received['duplicates_dropped']}, gaps {received['gaps']}, "
               f"corrupt {received['corrupt']}")
    categories = ", ".join(f"{k} {v}" for k, v in sorted(received["by_category"].items())) or "none"
    out.append(f"  samples by category: {categories}")
    if received["latency_p50_s"] is not None:
        out.append(f"  end-to-end latency p50 {received['latency_p50_s']:.3f} s, p99 {received['latency_p99_s']:.3f} s")
    verdict = "OK: every uploaded batch arrived once, intact" if (
        received["batches"] == sent["batches"] and received["corrupt"] == 0 and received["gaps"] == 0
        and received["samples"] == sent["samples"]) else "MISMATCH between sent and received"
    out.append(f"  {verdict}")
    return "\n".join(out)
