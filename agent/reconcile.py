"""What the backend says it holds about this car, against what the car's ledger says left it.

The backend answers an owner's data-access request with an export directory (``vehicle-sim cloud export``,
simulator/receiver/access.py): ``batches.jsonl`` (one stored batch a line, with ``payload_sha256``: the
SHA-256 of the whole payload as received), ``samples.csv`` and ``manifest.json`` (the SHA-256 of both).
The ledger records the SHA-256 of every payload that left the car (``upload`` entries, field ``sha256``),
so the two are matched on that hash alone, whatever the backend calls the batch:

  held        left the car and the backend holds it
  missing     left the car, the backend does not show it (lost, or held back from the owner)
  fabricated  the backend shows it, it never left this car (another car's, or made up)

Backend batches without a payload hash (stored by a receiver older than that column) cannot be matched
either way; they are listed as ``unverifiable`` and decide nothing.  A ledger upload repeated for the same
payload (a resend after a lost acknowledgement) counts once.

Pure functions: ``read_export`` (checks the manifest: a file whose SHA-256 differs from it is an
``ExportError`` naming the file), ``uploads_from_entries``, ``reconcile``, ``reconcile_dir`` and
``report_lines``; the CLI is ``vehicle-agent ledger reconcile`` (agent/cli/ledger.py), and the owner's page
calls the same functions.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.ledger import Ledger, LedgerEntry
from agent.timespec import iso_local

BATCHES_FILE, SAMPLES_FILE, MANIFEST_FILE = "batches.jsonl", "samples.csv", "manifest.json"
MAX_LINE_BYTES = 1 << 20  # a batches.jsonl line longer than this is not an export's
MAX_MANIFEST_BYTES = 1 << 20


class ExportError(ValueError):
    """The export directory is missing, incomplete, unreadable or altered (the message names the file)."""


@dataclass(frozen=True)
class Upload:
    """An ``upload`` entry of the car's ledger."""
    ledger_seq: int
    time: float
    batch: int | str
    stream: str
    sha256: str
    bytes: int | None
    first: float | None
    last: float | None
    categories: tuple[str, ...] = ()
    bench: bool = False


@dataclass(frozen=True)
class HeldBatch:
    """A line of the export's batches.jsonl."""
    line: int
    vehicle: str
    store_epoch: str
    boot_id: str
    seq: int
    stream: str
    payload_sha256: str
    bytes: int | None
    received: float | None
    t_first: float | None = None
    t_last: float | None = None
    categories: tuple[str, ...] = ()


@dataclass(frozen=True)
class Match:
    upload: Upload
    batch: HeldBatch


@dataclass(frozen=True)
class Reconciliation:
    held: list[Match]
    missing: list[Upload]
    fabricated: list[HeldBatch]
    unverifiable: list[HeldBatch] = field(default_factory=list)
    repeated_uploads: int = 0  # ledger upload entries of a payload already counted
    vehicle: str | None = None  # as the export's manifest names it

    @property
    def ok(self) -> bool:
        """Every batch that left the car is held, and nothing held that never left it."""
        return not self.missing and not self.fabricated

    def summary(self) -> str:
        return (f"held by the backend: {len(self.held)} batches; left the car but not held: {len(self.missing)}; "
                f"held but never left this car: {len(self.fabricated)}")

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "vehicle": self.vehicle,
                "counts": {"held": len(self.held), "missing": len(self.missing),
                           "fabricated": len(self.fabricated), "unverifiable": len(self.unverifiable),
                           "repeated_uploads": self.repeated_uploads},
                "held": [{"upload": asdict(m.upload), "batch": asdict(m.batch)} for m in self.held],
                "missing": [asdict(u) for u in self.missing],
                "fabricated": [asdict(b) for b in self.fabricated],
                "unverifiable": [asdict(b) for b in self.unverifiable]}


@dataclass(frozen=True)
class Export:
    directory: Path
    manifest: dict[str, Any]
    batches: list[HeldBatch]


# -- the ledger side -------------------------------------------------------------------------------------
def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def uploads_from_entries(entries: Iterable[LedgerEntry]) -> list[Upload]:
    """The ``upload`` entries, in ledger order; one whose ``sha256`` is not a hash (an edit) is left out
    (``vehicle-agent ledger verify`` reports the edit)."""
    out = []
    for entry in entries:
        f = entry.fields if isinstance(entry.fields, dict) else {}
        sha = f.get("sha256")
        if entry.kind != "upload" or not isinstance(sha, str) or len(sha) != 64:
            continue
        size = f.get("bytes")
        categories = f.get("categories")
        out.append(Upload(entry.seq, entry.time, f.get("batch", "?"), str(f.get("stream") or ""), sha.lower(),
                          size if isinstance(size, int) and not isinstance(size, bool) else None,
                          _number(f.get("first")), _number(f.get("last")),
                          tuple(map(str, categories)) if isinstance(categories, list) else (),
                          bool(f.get("bench", False))))
    return out


def ledger_uploads(state_dir: str | Path) -> list[Upload]:
    """The uploads of the ledger in ``state_dir``; only reads (a torn last line is left for the agent)."""
    return uploads_from_entries(Ledger.in_dir(state_dir, repair=False).entries())


# -- the backend side ------------------------------------------------------------------------------------
def _read_limited(path: Path, limit: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise ExportError(f"{path}: missing (not an export written by `vehicle-sim cloud export`)") from None
    except OSError as exc:
        raise ExportError(f"{path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise ExportError(f"{path}: larger than {limit} bytes")
    return data


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST_FILE
    try:
        manifest = json.loads(_read_limited(path, MAX_MANIFEST_BYTES))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: not JSON: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ExportError(f"{path}: no 'files' object (not an export's manifest)")
    return manifest


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError:
        raise ExportError(f"{path}: missing, though the manifest lists it") from None
    except OSError as exc:
        raise ExportError(f"{path}: {exc.strerror or exc}") from None
    return digest.hexdigest()


def check_manifest(directory: str | Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest lists has the SHA-256 it gives (ExportError naming the first that has not);
    batches.jsonl and samples.csv must be listed."""
    base = Path(directory)
    files = manifest["files"]
    for name in (BATCHES_FILE, SAMPLES_FILE):
        if name not in files:
            raise ExportError(f"{base / MANIFEST_FILE}: does not list {name}")
    for name, record in sorted(files.items()):
        expected = record.get("sha256") if isinstance(record, dict) else record
        if not isinstance(expected, str) or Path(name).name != name:
            raise ExportError(f"{base / MANIFEST_FILE}: unusable entry for {name!r}")
        actual = _sha256_of(base / name)
        if actual != expected.lower():
            raise ExportError(f"{base / name}: SHA-256 {actual} differs from the manifest's {expected} "
                              "(the file was altered after the export was written)")


def _batch(document: Any, where: str, line: int) -> HeldBatch:
    if not isinstance(document, dict):
        raise ExportError(f"{where}: not a JSON object")
    try:
        seq = document["seq"]
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise TypeError("seq is not an integer")
        size = document.get("bytes")
        categories = document.get("categories") or ()
        return HeldBatch(line, str(document["vehicle"]), str(document.get("store_epoch") or ""),
                         str(document["boot_id"]), seq, str(document.get("stream") or ""),
                         str(document.get("payload_sha256") or "").lower(),
                         size if isinstance(size, int) and not isinstance(size, bool) else None,
                         _number(document.get("received")), _number(document.get("t_first")),
                         _number(document.get("t_last")),
                         tuple(map(str, categories)) if isinstance(categories, (list, tuple)) else ())
    except KeyError as exc:
        raise ExportError(f"{where}: no field {exc}") from None
    except TypeError as exc:
        raise ExportError(f"{where}: {exc}") from None


def read_batches(path: str | Path) -> list[HeldBatch]:
    """The lines of a batches.jsonl (ExportError naming ``file:line`` for one that is not a batch)."""
    path = Path(path)
    out = []
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise ExportError(f"{path}: missing (not an export written by `vehicle-sim cloud export`)") from None
    with handle:
        for number, raw in enumerate(iter(lambda: handle.readline(MAX_LINE_BYTES + 1), b""), start=1):
            where = f"{path}:{number}"
            if len(raw) > MAX_LINE_BYTES:
                raise ExportError(f"{where}: line longer than {MAX_LINE_BYTES} bytes")
            if not raw.strip():
                continue
            try:
                document = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ExportError(f"{where}: broken JSON: {exc}") from None
            out.append(_batch(document, where, number))
    return out


def read_export(directory: str | Path) -> Export:
    """The export in ``directory``, its files checked against its manifest."""
    base = Path(directory)
    if not base.is_dir():
        raise ExportError(f"{base}: no such directory")
    if not (base / BATCHES_FILE).is_file():
        raise ExportError(f"{base}: no {BATCHES_FILE} (not an export written by `vehicle-sim cloud export`)")
    manifest = read_manifest(base)
    check_manifest(base, manifest)
    return Export(base, manifest, read_batches(base / BATCHES_FILE))


# -- the comparison --------------------------------------------------------------------------------------
def reconcile(uploads: Iterable[Upload], batches: Iterable[HeldBatch], vehicle: str | None = None) -> Reconciliation:
    """Match by payload SHA-256: held, missing (ledger order), fabricated (export order)."""
    held_by_sha: dict[str, HeldBatch] = {}
    unverifiable = []
    for batch in batches:
        if batch.payload_sha256:
            held_by_sha.setdefault(batch.payload_sha256, batch)
        else:
            unverifiable.append(batch)
    seen: set[str] = set()
    held, missing, repeated = [], [], 0
    for upload in uploads:
        if upload.sha256 in seen:
            repeated += 1
            continue
        seen.add(upload.sha256)
        batch = held_by_sha.get(upload.sha256)
        if batch is None:
            missing.append(upload)
        else:
            held.append(Match(upload, batch))
    fabricated = [batch for sha, batch in held_by_sha.items() if sha not in seen]
    return Reconciliation(held, missing, fabricated, unverifiable, repeated, vehicle)


def reconcile_dir(export_dir: str | Path, state_dir: str | Path) -> Reconciliation:
    """The export in ``export_dir`` against the ledger in the agent's ``state_dir``."""
    export = read_export(export_dir)
    vehicle = export.manifest.get("vehicle")
    return reconcile(ledger_uploads(state_dir), export.batches, str(vehicle) if vehicle is not None else None)


# -- for people ------------------------------------------------------------------------------------------
def describe_upload(upload: Upload) -> str:
    size = "?" if upload.bytes is None else str(upload.bytes)
    return (f"batch {upload.batch} ({upload.stream or '-'}), {iso_local(upload.first)} .. {iso_local(upload.last)}, "
            f"{size} bytes, sha256 {upload.sha256[:16]}..., sent {iso_local(upload.time)} (ledger #{upload.ledger_seq})"
            + (" BENCH" if upload.bench else ""))


def describe_batch(batch: HeldBatch) -> str:
    epoch = f"epoch {batch.store_epoch}, " if batch.store_epoch else ""
    size = "?" if batch.bytes is None else str(batch.bytes)
    return (f"{epoch}boot {batch.boot_id} seq {batch.seq} ({batch.stream or '-'}), received "
            f"{iso_local(batch.received)}, {size} bytes, sha256 {batch.payload_sha256[:16] or '-'}... "
            f"(batches.jsonl line {batch.line})")


def report_lines(result: Reconciliation) -> list[str]:
    """The summary line, then the missing and the fabricated batches, one a line."""
    lines = [result.summary()]
    if result.missing:
        lines.append(f"left the car but not held by the backend ({len(result.missing)}):")
        lines.extend(f"  {describe_upload(upload)}" for upload in result.missing)
    if result.fabricated:
        lines.append(f"held by the backend but never left this car ({len(result.fabricated)}):")
        lines.extend(f"  {describe_batch(batch)}" for batch in result.fabricated)
    if result.unverifiable:
        lines.append(f"held without a payload SHA-256, so not comparable ({len(result.unverifiable)}):")
        lines.extend(f"  {describe_batch(batch)}" for batch in result.unverifiable)
    if result.repeated_uploads:
        lines.append(f"({result.repeated_uploads} ledger upload entries repeat a payload already counted)")
    return lines


__all__ = ["BATCHES_FILE", "MANIFEST_FILE", "SAMPLES_FILE", "Export", "ExportError", "HeldBatch", "Match",
           "Reconciliation", "Upload", "check_manifest", "describe_batch", "describe_upload", "ledger_uploads",
           "read_batches", "read_export", "read_manifest", "reconcile", "reconcile_dir", "report_lines",
           "uploads_from_entries"]
