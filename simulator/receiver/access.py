"""The owner's data-access request: everything the receiver holds about one vehicle, as files.

``export_vehicle(store_or_path, vehicle, out_dir)`` writes into ``out_dir`` (new or empty):

  batches.jsonl  one JSON object per stored batch of that vehicle: vehicle, store_epoch, boot_id, seq,
                 stream, stream_seq, categories (list), bytes, samples, t_first, t_last, received,
                 consent_version, decoded, ``payload_sha256`` (SHA-256 of the whole payload as received:
                 what the car's ledger records as ``sha256`` of each upload) and ``header_sha256`` (the
                 header's SHA-256 of the compressed body)
  samples.csv    vehicle, boot_id, seq, timestamp, bus, key, category, value, raw: every decoded sample of
                 those batches, batch by batch in the order of batches.jsonl, each batch's in arrival order
  manifest.json  vehicle, counts, the SHA-256 and size of the two files, the time written, the receiver DB
                 (a SQLite file's absolute path, or the PostgreSQL URL without its password)

Nothing of another vehicle is written.  Batches and samples are read in one read transaction, so a
receiver writing the same database meanwhile cannot make the two files disagree.  The manifest is
written last: a directory without one is not a finished export.  ``agent/reconcile.py`` compares such
an export with the car's ledger (``vehicle-agent ledger reconcile DIR``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.timespec import iso_local
from simulator.receiver.sql import is_postgres_url
from simulator.receiver.store import ReceiverStore, open_receiver_store

EXPORT_FORMAT = "vehicle-data-access/1"
BATCHES_FILE, SAMPLES_FILE, MANIFEST_FILE = "batches.jsonl", "samples.csv", "manifest.json"
SAMPLE_HEADER = ("vehicle", "boot_id", "seq", "timestamp", "bus", "key", "category", "value", "raw")
_BATCH_FIELDS = ("vehicle", "store_epoch", "boot_id", "seq", "stream", "stream_seq", "categories", "bytes",
                 "samples", "t_first", "t_last", "received", "consent_version", "decoded", "payload_sha256",
                 "sha256")
_ORDER = "store_epoch, boot_id, seq"


class UnknownVehicle(LookupError):
    """The receiver's database holds no batch of that vehicle."""


@dataclass(frozen=True)
class ExportSummary:
    vehicle: str
    out_dir: Path
    batches: int
    samples: int
    batches_sha256: str  # of batches.jsonl as written
    samples_sha256: str  # of samples.csv as written
    manifest: Path
    receiver_db: str


def export_vehicle(store_or_path: ReceiverStore | str | Path, vehicle: str, out_dir: str | Path) -> ExportSummary:
    """Write the vehicle's batches and samples into ``out_dir``.  ``store_or_path``: an open store, a SQLite
    file or a ``postgresql://`` URL.  ValueError for a non-empty ``out_dir`` or a missing database file;
    UnknownVehicle when the database holds nothing of ``vehicle``."""
    out = Path(out_dir)
    _check_out_dir(out)
    if isinstance(store_or_path, ReceiverStore):
        return _export(store_or_path, vehicle, out)
    if not is_postgres_url(store_or_path) and not Path(store_or_path).is_file():
        raise ValueError(f"{store_or_path}: no such receiver database")
    store = open_receiver_store(store_or_path)
    try:
        return _export(store, vehicle, out)
    finally:
        store.close()


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"--out {out}: directory is not empty (an export goes into a new or empty directory, "
                         "so no earlier file can pass for part of it)")


def _export(store: ReceiverStore, vehicle: str, out: Path) -> ExportSummary:
    with store.snapshot() as db:
        total = db.execute("SELECT COUNT(*) FROM batches WHERE vehicle=?", (vehicle,)).fetchone()[0]
        if not total:
            vehicles = db.execute("SELECT COUNT(DISTINCT vehicle) FROM batches").fetchone()[0]
            raise UnknownVehicle(f"no batches for vehicle {vehicle} in DB {store.location} (it holds batches of "
                                 f"{vehicles} vehicle{'' if vehicles == 1 else 's'})")
        out.mkdir(parents=True, exist_ok=True)
        rows = db.iterate(f"SELECT {', '.join(_BATCH_FIELDS)} FROM batches WHERE vehicle=? ORDER BY {_ORDER}",
                          (vehicle,))
        batches = _write_batches(out / BATCHES_FILE, (dict(zip(_BATCH_FIELDS, row)) for row in rows))
        samples = db.iterate("SELECT vehicle, boot_id, seq, timestamp, bus, key, category, value, raw FROM samples "
                             f"WHERE vehicle=? ORDER BY {_ORDER}, rowid", (vehicle,))
        sample_count = _write_samples(out / SAMPLES_FILE, samples)
    files = {name: _file_digest(out / name) for name in (BATCHES_FILE, SAMPLES_FILE)}
    written = time.time()
    manifest = {
        "format": EXPORT_FORMAT,
        "vehicle": vehicle,
        "counts": {"batches": batches, "samples": sample_count},
        "files": files,
        "written": written,
        "written_iso": iso_local(written),
        "receiver_db": store.location,
    }
    _write_durably(out / MANIFEST_FILE, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return ExportSummary(vehicle, out, batches, sample_count, files[BATCHES_FILE]["sha256"],
                         files[SAMPLES_FILE]["sha256"], out / MANIFEST_FILE, manifest["receiver_db"])


def batch_document(row: dict[str, Any]) -> dict[str, Any]:
    """One line of batches.jsonl from a ``batches`` row (the header's body hash as ``header_sha256``)."""
    document = {name: row[name] for name in _BATCH_FIELDS if name != "sha256"}
    document["categories"] = [c for c in str(row["categories"] or "").split(",") if c]
    document["decoded"] = bool(row["decoded"])
    document["header_sha256"] = row["sha256"]
    return document


def _write_batches(path: Path, rows: Iterator[dict[str, Any]]) -> int:
    count = 0
    with open(path, "x", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(batch_document(row), sort_keys=True) + "\n")
            count += 1
        _sync(handle)
    return count


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, float):
        return repr(value)  # the shortest text that reads back as the same double
    return value


def _write_samples(path: Path, rows: Any) -> int:
    count = 0
    with open(path, "x", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(SAMPLE_HEADER)
        for row in rows:
            writer.writerow([_cell(value) for value in row])
            count += 1
        _sync(handle)
    return count


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file_digest(path: Path) -> dict[str, Any]:
    return {"sha256": file_sha256(path), "bytes": path.stat().st_size}


def _sync(handle: Any) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "xb") as handle:
        handle.write(data)
        _sync(handle)


__all__ = ["BATCHES_FILE", "EXPORT_FORMAT", "MANIFEST_FILE", "SAMPLES_FILE", "SAMPLE_HEADER", "ExportSummary",
           "UnknownVehicle", "batch_document", "export_vehicle", "file_sha256"]
