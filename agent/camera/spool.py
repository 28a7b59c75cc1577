"""Spool-directory intake of camera event records.

The camera system writes each record to a temporary name in the spool
directory and renames it to ``<name>.json`` when complete (rename is atomic on
one file system), so only ``*.json`` files are ever read; ``*.tmp``, hidden
files and anything else are left alone.  A valid record is handed to
``on_event`` and then moved to ``done/``; a malformed one is moved to the
quarantine directory together with ``<name>.reason.txt``.  Nothing is ever
deleted, and a bad record never stops the watcher.

Polling (not inotify) keeps this portable and simple; a camera produces a few
records a minute at most.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.camera.events import MAX_RECORD_BYTES, CameraEvent, CameraEventError, parse_event

log = logging.getLogger(__name__)

EventHandler = Callable[[CameraEvent], None]


@dataclass
class ScanResult:
    accepted: list[str] = field(default_factory=list)  # event ids
    quarantined: list[str] = field(default_factory=list)  # file names
    retried: list[str] = field(default_factory=list)  # valid files whose handler failed; kept for the next scan


def unique_target(directory: Path, name: str) -> Path:
    """``directory/name``, or ``name.1``, ``name.2`` ... if taken: a later record never overwrites an earlier one."""
    target = directory / name
    counter = 0
    while target.exists() or target.is_symlink():
        counter += 1
        target = directory / f"{name}.{counter}"
    return target


def quarantine_bytes(quarantine_dir: Path, name: str, data: bytes, reason: str) -> Path:
    """Keep a rejected record that exists only in memory (e.g. from the socket) with its reason."""
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    target = unique_target(quarantine_dir, name)
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, target)
    target.with_name(target.name + ".reason.txt").write_text(reason + "\n", encoding="utf-8")
    return target


class SpoolWatcher:
    """Polls ``spool_dir`` for completed records.  ``scan_once`` does one pass (tests, replay);
    ``start``/``stop`` run passes on a thread every ``poll_interval`` seconds, and ``on_event``
    then runs on that thread.  A record leaves the spool only after ``on_event`` returned."""

    def __init__(self, spool_dir: str | Path, quarantine_dir: str | Path, on_event: EventHandler,
                 done_dir: str | Path | None = None, poll_interval: float = 0.5) -> None:
        self.spool_dir = Path(spool_dir)
        self.quarantine_dir = Path(quarantine_dir)
        self.done_dir = Path(done_dir) if done_dir is not None else self.spool_dir / "done"
        self.on_event = on_event
        self.poll_interval = poll_interval
        self.accepted = 0
        self.quarantined = 0
        for directory in (self.spool_dir, self.quarantine_dir, self.done_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def pending(self) -> list[Path]:
        """Completed records waiting, oldest first (name breaks ties, so order is stable)."""
        entries = []
        with os.scandir(self.spool_dir) as scan:
            for entry in scan:
                if entry.name.startswith(".") or not entry.name.endswith(".json"):
                    continue
                try:
                    mtime = entry.stat(follow_symlinks=False).st_mtime_ns
                except FileNotFoundError:
                    continue  # taken away between listing and stat
                entries.append((mtime, entry.name))
        return [self.spool_dir / name for _, name in sorted(entries)]

    def scan_once(self) -> ScanResult:
        result = ScanResult()
        for path in self.pending():
            self._take(path, result)
        return result

    def _take(self, path: Path, result: ScanResult) -> None:
        try:
            info = path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISREG(info.st_mode):
            # A symlink could point anywhere (e.g. a secret file); never follow it.
            self._quarantine(path, "not a regular file (symlinks and devices are refused)", result)
            return
        if info.st_size > MAX_RECORD_BYTES:
            self._quarantine(path, f"record too large ({info.st_size} bytes, limit {MAX_RECORD_BYTES})", result)
            return
        try:
            data = _read_no_follow(path)
        except OSError as exc:
            self._quarantine(path, f"cannot read: {exc.strerror or exc}", result)
            return
        try:
            event = parse_event(data, path.name)
        except CameraEventError as exc:
            self._quarantine(path, str(exc), result)
            return
        try:
            self.on_event(event)
        except Exception:  # the consumer's bug must not lose the record: keep it for the next pass
            log.exception("camera event %s from %s: handler failed; kept in the spool", event.event_id, path)
            result.retried.append(path.name)
            return
        _move(path, unique_target(self.done_dir, path.name))
        self.accepted += 1
        result.accepted.append(event.event_id)

    def _quarantine(self, path: Path, reason: str, result: ScanResult) -> None:
        target = unique_target(self.quarantine_dir, path.name)
        try:
            _move(path, target)
        except OSError as exc:
            log.error("cannot quarantine %s (%s): %s", path, reason, exc)
            return
        target.with_name(target.name + ".reason.txt").write_text(reason + "\n", encoding="utf-8")
        log.warning("camera event quarantined: %s", reason)
        self.quarantined += 1
        result.quarantined.append(path.name)

    # -- background polling --------------------------------------------------------------
    def start(self) -> SpoolWatcher:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="camera-spool", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.scan_once()
            except OSError as exc:  # e.g. spool unmounted: report, keep polling
                log.error("camera spool %s: %s", self.spool_dir, exc)
            self._stop.wait(self.poll_interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def _read_no_follow(path: Path) -> bytes:
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as file:
        return file.read(MAX_RECORD_BYTES + 1)


def _move(path: Path, target: Path) -> None:
    # Same file system (done/ and quarantine/ normally live beside the spool): an atomic rename.
    # Otherwise fall back to copy + delete so the record still arrives.
    try:
        os.rename(path, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.move(str(path), str(target))
