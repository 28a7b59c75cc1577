"""Local storage of incident snapshots, one directory per snapshot.

    <dir>/<id>/snapshot.json      what triggered it, the window, categories, completeness flags
              frames.log          every raw CAN frame of the window (candump -L, python-can's writer)
              decoded.jsonl       decoded frames of the listed categories: DBC raw values per signal
              signals.json        the signal definitions needed to turn raw values into physical ones
              completeness.json   signals the DBCs define vs signals recorded
              upload.json         present once the snapshot was uploaded (written by mark_uploaded)

Snapshots are stored whatever the consent: they never leave the car without
``incident`` consent, but the owner may always export them.  A snapshot is
written under a temporary name and renamed into place, so a listed snapshot
is always whole.  ``prune`` removes the oldest snapshots only while the store
is over its byte quota, and never below ``keep`` snapshots.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import can

from agent.incident.config import IncidentConfig
from agent.incident.manifest import completeness
from agent.incident.snapshot import Snapshot, TriggerHit
from agent.model import DecodedFrame, SignalSpec
from agent.sources.log import LogSource

log = logging.getLogger(__name__)

FORMAT = "vehicle-edge-agent incident snapshot 1"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class IncidentStoreError(ValueError):
    pass


@dataclass(frozen=True)
class IncidentInfo:
    """One stored snapshot, as listed (without its frames)."""

    id: str
    path: Path
    trigger: TriggerHit
    triggers: tuple[TriggerHit, ...]
    start: float
    end: float
    categories: tuple[str, ...]
    complete: bool
    problems: tuple[str, ...]
    raw_frames: int
    samples: int
    size_bytes: int
    uploaded_at: float | None


@dataclass
class StoredSnapshot:
    info: IncidentInfo
    meta: dict[str, Any]
    specs: dict[str, SignalSpec]
    decoded: list[DecodedFrame]
    completeness: dict[str, Any]

    def raw_frames(self) -> list[tuple[str, can.Message]]:
        return list(LogSource(self.info.path / "frames.log"))

    @property
    def frames_path(self) -> Path:
        return self.info.path / "frames.log"


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def write_candump(frames: list[tuple[str, can.Message]], path: Path) -> None:
    """Frames as candump -L text; each frame's channel is its bus name."""
    writer = can.io.CanutilsLogWriter(str(path))
    try:
        for bus, msg in frames:
            copy = can.Message(timestamp=msg.timestamp, arbitration_id=msg.arbitration_id,
                               is_extended_id=msg.is_extended_id, is_remote_frame=msg.is_remote_frame,
                               is_error_frame=msg.is_error_frame, is_fd=msg.is_fd,
                               bitrate_switch=msg.bitrate_switch, error_state_indicator=msg.error_state_indicator,
                               dlc=msg.dlc, data=msg.data, channel=bus, is_rx=msg.is_rx)
            writer.on_message_received(copy)
    finally:
        writer.stop()
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def _spec_to_json(spec: SignalSpec) -> dict[str, Any]:
    data = asdict(spec)
    data["choices"] = {str(k): v for k, v in spec.choices.items()}
    return data


def _spec_from_json(data: dict[str, Any]) -> SignalSpec:
    fields = dict(data)
    fields["choices"] = {int(k): str(v) for k, v in (data.get("choices") or {}).items()}
    return SignalSpec(**fields)


def _hit_json(hit: TriggerHit) -> dict[str, Any]:
    return {"name": hit.name, "timestamp": hit.timestamp, "reason": hit.reason}


def _hit(data: dict[str, Any]) -> TriggerHit:
    return TriggerHit(str(data["name"]), float(data["timestamp"]), str(data.get("reason", "")))


def _dir_size(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.iterdir() if entry.is_file())


class IncidentStore:
    def __init__(self, directory: str | Path, keep: int = 20, max_bytes: int | None = None,
                 create: bool = True) -> None:
        self.dir = Path(directory)
        self.keep = keep
        self.max_bytes = max_bytes
        if create:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        elif not self.dir.is_dir():
            raise IncidentStoreError(f"{self.dir}: no incident store here (no snapshot was ever taken)")

    @classmethod
    def from_config(cls, state_dir: str | Path, config: IncidentConfig, create: bool = True) -> IncidentStore:
        """The store the ``incidents:`` section describes (``dir`` relative to the state directory)."""
        return cls(Path(state_dir) / config.dir, keep=config.keep, max_bytes=int(config.max_mb * 1024 * 1024),
                   create=create)

    # -- writing -------------------------------------------------------------------------
    def save(self, snapshot: Snapshot) -> IncidentInfo:
        snapshot_id = snapshot.id
        counter = 1
        while (self.dir / snapshot_id).exists():
            counter += 1
            snapshot_id = f"{snapshot.id}-{counter}"
        partial = self.dir / f".partial-{snapshot_id}"
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(mode=0o700)
        listed = {key: spec for key, spec in snapshot.specs.items() if spec.category in snapshot.categories}
        report = completeness(snapshot.specs, snapshot.categories, snapshot.decoded, snapshot.raw_frames)
        meta = {
            "format": FORMAT, "id": snapshot_id, "trigger": _hit_json(snapshot.trigger),
            "triggers": [_hit_json(hit) for hit in snapshot.triggers],
            "window": {"start": snapshot.start, "end": snapshot.end, "pre_s": snapshot.pre_s,
                       "post_s": snapshot.post_s},
            "categories": list(snapshot.categories), "complete": snapshot.complete,
            "problems": list(snapshot.problems), "raw_frames": len(snapshot.raw_frames),
            "samples": report["samples"],
        }
        try:
            write_candump(snapshot.raw_frames, partial / "frames.log")
            lines = [json.dumps({"t": round(frame.timestamp, 6), "bus": frame.bus, "id": frame.frame_id,
                                 "message": frame.message, "raw": frame.raw}) + "\n" for frame in snapshot.decoded]
            _fsync_write(partial / "decoded.jsonl", "".join(lines).encode())
            _fsync_write(partial / "signals.json",
                         json.dumps({k: _spec_to_json(s) for k, s in sorted(listed.items())}, indent=1).encode())
            _fsync_write(partial / "completeness.json", json.dumps(report, indent=1).encode())
            _fsync_write(partial / "snapshot.json", json.dumps(meta, indent=1).encode())
        except BaseException:
            # A full disk: give the space back (the buffer needs it too); the caller may retry.
            shutil.rmtree(partial, ignore_errors=True)
            raise
        os.rename(partial, self.dir / snapshot_id)
        self._sync_dir()
        log.info("incident snapshot %s stored (%d frames, %d samples)", snapshot_id, len(snapshot.raw_frames),
                 report["samples"])
        self.prune()
        return self.info(snapshot_id)

    def _sync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def mark_uploaded(self, snapshot_id: str, when: float) -> None:
        path = self._path(snapshot_id)
        _fsync_write(path / "upload.json", json.dumps({"uploaded_at": when}).encode())

    def prune(self) -> list[str]:
        """Remove the oldest snapshots while over ``max_bytes``; never fewer than ``keep`` remain."""
        if self.max_bytes is None:
            return []
        infos = self.list()
        total = sum(info.size_bytes for info in infos)
        removed = []
        while total > self.max_bytes and len(infos) > self.keep:
            oldest = infos.pop(0)
            shutil.rmtree(oldest.path)
            total -= oldest.size_bytes
            removed.append(oldest.id)
            log.warning("incident snapshot %s removed: store over its quota of %d bytes", oldest.id, self.max_bytes)
        return removed

    # -- reading -------------------------------------------------------------------------
    def _path(self, snapshot_id: str) -> Path:
        if not _ID_RE.match(snapshot_id):
            raise IncidentStoreError(f"not a snapshot id: {snapshot_id!r}")
        path = self.dir / snapshot_id
        if not (path / "snapshot.json").is_file():
            known = ", ".join(info.id for info in self.list()[-5:]) or "none stored"
            raise IncidentStoreError(f"no incident snapshot {snapshot_id!r} in {self.dir} (latest: {known})")
        return path

    def info(self, snapshot_id: str) -> IncidentInfo:
        path = self._path(snapshot_id)
        try:
            meta = json.loads((path / "snapshot.json").read_text(encoding="utf-8"))
            uploaded = None
            with contextlib.suppress(FileNotFoundError):
                uploaded = float(json.loads((path / "upload.json").read_text(encoding="utf-8"))["uploaded_at"])
            return IncidentInfo(
                id=meta["id"], path=path, trigger=_hit(meta["trigger"]),
                triggers=tuple(_hit(hit) for hit in meta["triggers"]), start=float(meta["window"]["start"]),
                end=float(meta["window"]["end"]), categories=tuple(meta["categories"]),
                complete=bool(meta["complete"]), problems=tuple(meta.get("problems", ())),
                raw_frames=int(meta["raw_frames"]), samples=int(meta["samples"]), size_bytes=_dir_size(path),
                uploaded_at=uploaded)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IncidentStoreError(f"{path}: damaged snapshot: {exc}") from None

    def list(self) -> list[IncidentInfo]:
        """Stored snapshots, oldest trigger first; damaged ones are logged and skipped."""
        infos = []
        for path in self.dir.iterdir():
            if path.name.startswith(".") or not path.is_dir():
                continue
            try:
                infos.append(self.info(path.name))
            except IncidentStoreError as exc:
                log.error("%s", exc)
        return sorted(infos, key=lambda info: (info.trigger.timestamp, info.id))

    def load(self, snapshot_id: str) -> StoredSnapshot:
        info = self.info(snapshot_id)
        path = info.path
        try:
            meta = json.loads((path / "snapshot.json").read_text(encoding="utf-8"))
            specs = {key: _spec_from_json(value)
                     for key, value in json.loads((path / "signals.json").read_text(encoding="utf-8")).items()}
            decoded = []
            with open(path / "decoded.jsonl", encoding="utf-8") as file:
                for line in file:
                    record = json.loads(line)
                    decoded.append(DecodedFrame(float(record["t"]), str(record["bus"]), int(record["id"]),
                                                str(record["message"]), dict(record["raw"])))
            report = json.loads((path / "completeness.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IncidentStoreError(f"{path}: damaged snapshot: {exc}") from None
        return StoredSnapshot(info, meta, specs, decoded, report)
