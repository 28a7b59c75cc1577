"""The owner's export: everything the car holds about an incident or a time range, signed.

    <out>/samples/<category>.csv       decoded physical samples
                                       (timestamp,time_local,bus,signal,vss,value,unit,label)
    <out>/samples/<category>.jsonl     the same, one JSON object per sample
    <out>/track.gpx                    the position samples as a GPX 1.1 track
    <out>/frames.log                   the raw CAN frames (candump -L; channel = bus name)
    <out>/dbc/<name>.dbc, SHA256SUMS   the DBC files used to decode, and their SHA-256
    <out>/consent-history.jsonl        the owner's consent changes (one JSON object per line)
    <out>/ledger.jsonl                 the ledger entries of the period
    <out>/completeness.json            incident only: signals defined vs recorded
    <out>/vehicle-public-key.pem       the vehicle's Ed25519 public key
    <out>/manifest.json                every file above with its SHA-256 and size
    <out>/manifest.json.sig            Ed25519 signature of manifest.json's exact bytes (base64)

Sample timestamps are written with microsecond precision, the precision of
the candump log, so the raw frames re-decode to exactly the exported samples.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import can

from agent.decode import Decoder, SignalFilter
from agent.export.gpx import Sample, track_points, write_gpx
from agent.export.signing import fingerprint, public_pem, sign
from agent.incident.store import IncidentStore, write_candump
from agent.model import DecodedFrame, SignalSpec
from agent.timespec import iso_local

if TYPE_CHECKING:  # cryptography is imported where a key is used (agent/export/signing.py)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

FORMAT = "vehicle-edge-agent export 1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
PUBLIC_KEY = "vehicle-public-key.pem"
# timestamp: epoch seconds, for machines; time_local: the same instant as local ISO 8601, for people.
SAMPLE_FIELDS = ("timestamp", "time_local", "bus", "signal", "vss", "value", "unit", "label")


class ExportError(ValueError):
    pass


class NothingToExport(ExportError):
    """The range holds no sample: nothing is written, and the message says why."""


@dataclass
class ExportContent:
    kind: str  # "incident" | "range"
    start: float
    end: float
    frames: Sequence[tuple[str, can.Message]]
    samples: Sequence[Sample]
    dbc_paths: Sequence[Path]
    consent_history: Sequence[Mapping[str, Any]] = ()
    ledger_entries: Sequence[Mapping[str, Any]] = ()
    vehicle_id: str = ""
    details: dict[str, Any] = field(default_factory=dict)  # e.g. the incident's triggers
    extra_json: dict[str, Any] = field(default_factory=dict)  # file name -> JSON document


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    files: tuple[str, ...]
    samples: int
    frames: int
    fingerprint: str


def samples_from_frames(frames: Iterable[DecodedFrame], specs: Mapping[str, SignalSpec],
                        wanted: SignalFilter | None = None) -> list[Sample]:
    """Physical samples of decoded frames, in frame order (signals in the frame's order); only the signals
    ``wanted`` accepts, when given."""
    samples = []
    for frame in frames:
        prefix = frame.message + "."
        timestamp = round(frame.timestamp, 6)
        for name, raw in frame.raw.items():
            spec = specs.get(prefix + name)
            if spec is None or (wanted is not None and not wanted(spec)):
                continue
            samples.append(Sample(timestamp, frame.bus, spec.key, spec.vss_path, spec.to_physical(raw), spec.unit,
                                  spec.label(raw), spec.category))
    return samples


def _prepare(out_dir: Path) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ExportError(f"{out_dir}: exists and is not a directory")
        if any(out_dir.iterdir()):
            raise ExportError(f"{out_dir}: directory is not empty; exports never overwrite files")
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)


def _json_value(value: int | float) -> int | float | None:
    return value if not isinstance(value, float) or math.isfinite(value) else None


def _write_samples(out_dir: Path, samples: Sequence[Sample]) -> list[str]:
    by_category: dict[str, list[Sample]] = {}
    for sample in samples:
        by_category.setdefault(sample.category, []).append(sample)
    (out_dir / "samples").mkdir()
    written = []
    for category, items in sorted(by_category.items()):
        text = io.StringIO()
        table = csv.writer(text, lineterminator="\n")
        table.writerow(SAMPLE_FIELDS)
        lines = []
        for s in items:
            table.writerow((f"{s.timestamp:.6f}", iso_local(s.timestamp, "microseconds"), s.bus, s.key, s.vss,
                            repr(s.value), s.unit, s.label or ""))
            record = {"timestamp": s.timestamp, "bus": s.bus, "signal": s.key, "vss": s.vss,
                      "value": _json_value(s.value), "unit": s.unit}
            if s.label is not None:
                record["label"] = s.label
            lines.append(json.dumps(record, allow_nan=False) + "\n")
        (out_dir / "samples" / f"{category}.csv").write_text(text.getvalue(), encoding="utf-8")
        (out_dir / "samples" / f"{category}.jsonl").write_text("".join(lines), encoding="utf-8")
        written += [f"samples/{category}.csv", f"samples/{category}.jsonl"]
    return written


def _write_dbcs(out_dir: Path, dbc_paths: Sequence[Path]) -> list[str]:
    (out_dir / "dbc").mkdir()
    written, sums = [], []
    for path in dbc_paths:
        target = out_dir / "dbc" / Path(path).name
        if target.exists():
            raise ExportError(f"two DBC files are named {target.name}; rename one")
        shutil.copyfile(path, target)
        sums.append(f"{hashlib.sha256(target.read_bytes()).hexdigest()}  {target.name}\n")
        written.append(f"dbc/{target.name}")
    (out_dir / "dbc" / "SHA256SUMS").write_text("".join(sums), encoding="utf-8")
    return [*written, "dbc/SHA256SUMS"]


def _jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    path.write_text("".join(json.dumps(dict(r), sort_keys=True) + "\n" for r in records), encoding="utf-8")


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="microseconds")


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_export(content: ExportContent, out_dir: str | Path, signing_key: Ed25519PrivateKey) -> ExportResult:
    out = Path(out_dir)
    _prepare(out)
    files = _write_samples(out, content.samples)
    points = track_points(content.samples)
    write_gpx(points, out / "track.gpx", f"{content.vehicle_id or 'vehicle'} {content.kind} {_utc(content.start)}")
    files.append("track.gpx")
    write_candump(list(content.frames), out / "frames.log")
    files.append("frames.log")
    files += _write_dbcs(out, content.dbc_paths)
    _jsonl(out / "consent-history.jsonl", content.consent_history)
    _jsonl(out / "ledger.jsonl", content.ledger_entries)
    files += ["consent-history.jsonl", "ledger.jsonl"]
    for name, document in content.extra_json.items():
        (out / name).write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
        files.append(name)
    (out / PUBLIC_KEY).write_bytes(public_pem(signing_key))
    files.append(PUBLIC_KEY)
    key_fingerprint = fingerprint(signing_key)
    manifest = {
        "format": FORMAT,
        "kind": content.kind,
        "vehicle": content.vehicle_id,
        "created": _utc(time.time()),
        "window": {"start": content.start, "end": content.end, "start_utc": _utc(content.start),
                   "end_utc": _utc(content.end)},
        "details": content.details,
        "counts": {"samples": len(content.samples), "frames": len(content.frames), "track_points": len(points)},
        "signing": {"algorithm": "Ed25519", "public_key": PUBLIC_KEY, "fingerprint_sha256": key_fingerprint,
                    "signature": SIGNATURE},
        "files": [{"path": name, "sha256": file_digest(out / name), "size": (out / name).stat().st_size}
                  for name in sorted(files)],
    }
    manifest_bytes = (json.dumps(manifest, indent=1, sort_keys=False) + "\n").encode()
    (out / MANIFEST).write_bytes(manifest_bytes)
    (out / SIGNATURE).write_text(sign(signing_key, manifest_bytes) + "\n", encoding="ascii")
    for name in (*files, MANIFEST, SIGNATURE):
        os.chmod(out / name, 0o600)
    return ExportResult(out, (*sorted(files), MANIFEST, SIGNATURE), len(content.samples), len(content.frames),
                        key_fingerprint)


# -- the two kinds of export -----------------------------------------------------------


def export_incident(store: IncidentStore, incident_id: str, out_dir: str | Path, signing_key: Ed25519PrivateKey,
                    dbc_paths: Sequence[str | Path], consent_history: Sequence[Mapping[str, Any]] = (),
                    ledger_entries: Sequence[Mapping[str, Any]] = (), vehicle_id: str = "",
                    ledger_head: Mapping[str, Any] | None = None) -> ExportResult:
    """One stored snapshot: its raw frames, decoded samples, completeness manifest.

    ``ledger_head`` (``Ledger.head()``) goes into the signed manifest: it pins the whole ledger chain."""
    stored = store.load(incident_id)
    info = stored.info
    content = ExportContent(
        kind="incident", start=info.start, end=info.end, frames=stored.raw_frames(),
        samples=samples_from_frames(stored.decoded, stored.specs), dbc_paths=[Path(p) for p in dbc_paths],
        consent_history=consent_history, ledger_entries=ledger_entries, vehicle_id=vehicle_id,
        details={"incident": info.id, "trigger": stored.meta["trigger"], "triggers": stored.meta["triggers"],
                 "categories": list(info.categories), "complete": info.complete, "problems": list(info.problems),
                 "ledger_head": dict(ledger_head) if ledger_head else None},
        extra_json={"completeness.json": stored.completeness})
    return write_export(content, out_dir, signing_key)


@dataclass
class _Span:
    """How many frames were offered, and the times they cover (to say why a range is empty)."""

    frames: int = 0
    first: float = math.inf
    last: float = -math.inf

    def add(self, timestamp: float) -> None:
        self.frames += 1
        self.first = min(self.first, timestamp)
        self.last = max(self.last, timestamp)


def outside_span(start: float, end: float, first: float, last: float, available: str) -> str:
    """Why [start, end] holds nothing when ``available`` (e.g. "5 incident snapshots") spans [first, last]."""
    side = "before the first" if end < first else "after the last" if start > last else "between"
    return (f"nothing to export for {iso_local(start)} .. {iso_local(end)}: the range is {side} frames; the "
            f"{available} available span {iso_local(first)} .. {iso_local(last)}")


def _why_empty(seen: _Span, kept: Sequence, decoded: Sequence, filters: str, start: float, end: float) -> str:
    asked = f"{iso_local(start)} .. {iso_local(end)}"
    if seen.frames == 0:
        return (f"nothing to export for {asked}: there are no raw frames at all (the car keeps raw frames only "
                "around incidents; give the recorded logs with --log FILE)")
    if not kept:
        return outside_span(start, end, seen.first, seen.last, f"{seen.frames} frames")
    if not decoded:
        return (f"nothing to export for {asked}: {len(kept)} frames are in the range but none decodes with the "
                "configured DBC files")
    if not filters:
        return f"nothing to export for {asked}: {len(decoded)} frames decode in the range but carry no signal"
    return (f"nothing to export for {asked}: {len(decoded)} frames decode in the range, but no sample passes "
            f"the filters asked for ({filters})")


def export_range(frames: Iterable[tuple[str, can.Message]], decoder: Decoder, start: float, end: float,
                 out_dir: str | Path, signing_key: Ed25519PrivateKey, dbc_paths: Sequence[str | Path],
                 consent_history: Sequence[Mapping[str, Any]] = (), ledger_entries: Sequence[Mapping[str, Any]] = (),
                 vehicle_id: str = "", categories: Iterable[str] | None = None,
                 ledger_head: Mapping[str, Any] | None = None, signals: SignalFilter | None = None,
                 signals_asked: str = "") -> ExportResult:
    """Raw frames with start <= t <= end (e.g. from recorded logs or snapshots), decoded with ``decoder``.

    ``categories`` and ``signals`` (a filter on the signal specs; ``signals_asked`` names it, e.g. the
    ``--signals`` globs) limit the decoded samples; the raw frames are the owner's and go in whole.
    """
    if not end >= start:
        raise ExportError(f"--to ({_utc(end)}) is before --from ({_utc(start)})")
    wanted = frozenset(categories) if categories is not None else None
    kept: list[tuple[str, can.Message]] = []
    decoded: list[DecodedFrame] = []
    seen = _Span()
    for bus, msg in frames:
        seen.add(msg.timestamp)
        if not start <= round(msg.timestamp, 6) <= end:
            continue
        kept.append((bus, msg))
        frame = decoder.decode(msg, bus)
        if frame is not None:
            decoded.append(frame)
    kept.sort(key=lambda item: item[1].timestamp)
    decoded.sort(key=lambda frame: frame.timestamp)
    samples = samples_from_frames(decoded, decoder.specs, signals)
    if wanted is not None:
        samples = [s for s in samples if s.category in wanted]
    if not samples:
        filters = [f"categories {', '.join(sorted(wanted))}"] if wanted is not None else []
        filters += [f"signals {signals_asked or 'filter'}"] if signals is not None else []
        raise NothingToExport(_why_empty(seen, kept, decoded, "; ".join(filters), start, end))
    content = ExportContent(kind="range", start=start, end=end, frames=kept, samples=samples,
                            dbc_paths=[Path(p) for p in dbc_paths], consent_history=consent_history,
                            ledger_entries=ledger_entries, vehicle_id=vehicle_id,
                            details={"categories": sorted(wanted) if wanted is not None else "all",
                                     **({"signals": signals_asked or "filtered"} if signals is not None else {}),
                                     "ledger_head": dict(ledger_head) if ledger_head else None})
    return write_export(content, out_dir, signing_key)
