"""Inputs beside the CAN data path: incident snapshots, camera events and DTC changes.

Both hang off the pipeline (raw frames, decoded frames) and produce their own
batches, which go into the same store as telemetry (incident: highest
priority, never evicted; camera: above telemetry) through the same door: the
store writer (``agent.flow.writer``), which numbers them, checks them against
the live consent and keeps them for a retry when the store refuses writes.
What of them may leave is ``agent.privacy.decision``'s call (through
``snapshot_batches`` and ``camera_decision``).  Camera records arrive on other
threads (spool watcher, socket) and are handed to the pipeline thread through a
bounded queue; drops are counted.
"""

from __future__ import annotations

import logging
import queue
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.camera.config import CameraConfig
from agent.camera.rules import CAMERA_STREAM, camera_decision
from agent.camera.socket_in import CameraSocketServer
from agent.camera.spool import SpoolWatcher
from agent.camera.upload import camera_batch
from agent.diag.dtc import DtcParseError, DtcTracker, is_dtc_response
from agent.diag.upload import DIAGNOSTICS_CATEGORY, DIAGNOSTICS_STREAM, dtc_batch
from agent.flow.pipeline import Pipeline
from agent.flow.writer import StoreWriter
from agent.incident.config import IncidentConfig
from agent.incident.snapshot import IncidentRecorder, Snapshot
from agent.incident.store import IncidentStore
from agent.incident.upload import INCIDENT_STREAM, snapshot_batches
from agent.owner.recorder import ArchiveRecorder

log = logging.getLogger(__name__)

# What is kept in memory for a retry while the disk is full (a snapshot holds up to pre_s + post_s of frames).
MAX_UNSAVED_SNAPSHOTS = 4
# Between retries of a snapshot that could not be saved (one costs a second of CPU to write out again).
RETRY_INTERVAL_S = 5.0


@dataclass
class SidecarCounters:
    snapshots: int = 0
    snapshot_batches: int = 0
    camera_events: int = 0
    camera_uploaded: int = 0
    camera_kept_in_car: int = 0
    camera_dropped_queue_full: int = 0
    # A full disk: the snapshot is kept in memory and retried (batches wait in the store writer).
    snapshot_errors: int = 0
    dropped_unsaved: int = 0  # snapshots given up past MAX_UNSAVED_SNAPSHOTS
    dtc_readings: int = 0  # DTC responses seen (ours or another tester's)
    dtc_changes: int = 0
    dtc_uploaded: int = 0
    dtc_kept_in_car: int = 0  # vehicle_health not granted
    dtc_parse_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass
class Sidecars:
    """Incident recorder + camera intake + the owner archive for one pipeline."""

    pipeline: Pipeline
    writer: StoreWriter
    policy: Any
    vehicle_id: str
    incidents: IncidentStore | None = None
    recorder: IncidentRecorder | None = None
    camera: SpoolWatcher | None = None
    camera_socket: CameraSocketServer | None = None
    archive: ArchiveRecorder | None = None  # the owner's trips, kept in the car (agent/owner)
    dtc: DtcTracker | None = None
    _dtc_changes: list = field(default_factory=list)  # pipeline thread only
    counters: SidecarCounters = field(default_factory=SidecarCounters)
    _events: queue.Queue = field(default_factory=lambda: queue.Queue(maxsize=1024))
    _unsaved: deque = field(default_factory=deque)  # snapshots not yet on disk
    _retry_at: float = 0.0

    # -- set-up ------------------------------------------------------------------
    def attach_incidents(self, config: IncidentConfig, state_dir: Path) -> None:
        self.incidents = IncidentStore.from_config(state_dir, config)
        self.recorder = IncidentRecorder(config, self.pipeline.decoder.specs, self._on_snapshot)
        self.pipeline.raw_listeners.append(self.recorder.on_raw)
        self.pipeline.frame_listeners.append(self.recorder.on_frame)

    def attach_archive(self, recorder: ArchiveRecorder) -> None:
        self.archive = recorder
        self.pipeline.frame_listeners.append(recorder)

    def attach_diagnostics(self, decoder: Any) -> None:
        """DTC readings in every reassembled diagnostic answer the decoder sees (``TransportDecoder``)."""
        listeners = getattr(decoder, "transfer_listeners", None)
        if listeners is None:  # no ISO-TP ids on any bus: no DTC answer can arrive
            return
        self.dtc = DtcTracker()
        listeners.append(self._on_transfer)

    def _on_transfer(self, bus: str, ecu: int, timestamp: float, sdu: bytes) -> None:
        if not is_dtc_response(sdu):
            return
        self.counters.dtc_readings += 1
        try:
            changes = self.dtc.observe(timestamp, bus, ecu, sdu)
        except DtcParseError as exc:
            self.counters.dtc_parse_errors += 1
            log.warning("bus %s: DTC answer of 0x%X not read: %s", bus, ecu, exc)
            return
        self.counters.dtc_changes += len(changes)
        self._dtc_changes.extend(changes)

    def _send_dtc_changes(self) -> None:
        changes, self._dtc_changes = self._dtc_changes, []
        if not changes:
            return
        if not self.policy.is_granted(DIAGNOSTICS_CATEGORY):
            self.counters.dtc_kept_in_car += len(changes)
            return
        self.writer.write(dtc_batch(changes, self.vehicle_id, self.writer.numbers(DIAGNOSTICS_STREAM),
                                    self.policy.version, bench=self.policy.bench))
        self.counters.dtc_uploaded += len(changes)

    def attach_camera(self, config: CameraConfig, state_dir: Path) -> None:
        spool, quarantine, socket_path = config.paths(state_dir)
        for folder in (spool, quarantine):
            folder.mkdir(parents=True, exist_ok=True)
        self.camera = SpoolWatcher(spool, quarantine, self._enqueue_event, poll_interval=config.poll_interval_s)
        self.camera.start()
        if socket_path is not None:
            socket_path.parent.mkdir(parents=True, exist_ok=True)
            self.camera_socket = CameraSocketServer(socket_path, self._enqueue_event, quarantine_dir=quarantine)
            self.camera_socket.start()

    # -- other threads -------------------------------------------------------------
    def _enqueue_event(self, event: Any) -> None:
        try:
            self._events.put_nowait(event)
        except queue.Full:
            self.counters.camera_dropped_queue_full += 1
            raise  # the spool watcher leaves the file in place and retries later

    # -- pipeline thread -------------------------------------------------------------
    def _on_snapshot(self, snapshot: Snapshot) -> None:
        assert self.incidents is not None
        try:
            info = self.incidents.save(snapshot)
        except OSError as exc:  # disk full: keep it and try again on the next poll
            self.counters.snapshot_errors += 1
            log.warning("incident snapshot %s not saved, will retry: %s", snapshot.id, exc)
            if len(self._unsaved) >= MAX_UNSAVED_SNAPSHOTS:
                self._unsaved.popleft()
                self.counters.dropped_unsaved += 1
            self._unsaved.append(snapshot)
            return
        self.counters.snapshots += 1
        batches = []
        # Without incident consent the snapshot stays in the car: no need to read it back.
        if self.policy.is_granted("incident"):
            stored = self.incidents.load(info.id)
            batches = snapshot_batches(stored, self.policy, self.vehicle_id,
                                       lambda: self.writer.numbers(INCIDENT_STREAM))
        for batch in batches:
            self.writer.write(batch)
        self.counters.snapshot_batches += len(batches)
        log.info("incident snapshot %s saved (%d upload batches)", info.id, len(batches))

    def _retry(self, now: float) -> None:
        if now < self._retry_at or not self._unsaved:
            return
        for _ in range(len(self._unsaved)):
            self._on_snapshot(self._unsaved.popleft())
        self._retry_at = now + RETRY_INTERVAL_S if self._unsaved else 0.0

    def poll(self, now: float) -> None:
        """Drain camera events and close incident windows that are due (call about once a second)."""
        self._retry(now)
        outgoing = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                break
            self.counters.camera_events += 1
            if self.recorder is not None:
                self.recorder.on_camera_event(event)
            decision = camera_decision(event, self.policy, now)
            if decision is None:
                self.counters.camera_kept_in_car += 1
            else:
                outgoing.append(decision)
        if outgoing:
            batch = camera_batch(outgoing, self.vehicle_id, self.writer.numbers(CAMERA_STREAM),
                                 self.policy.version, bench=self.policy.bench)
            self.writer.write(batch)
            self.counters.camera_uploaded += len(outgoing)
        self._send_dtc_changes()
        if self.recorder is not None:
            self.recorder.close_due(now)
        if self.archive is not None:  # a quiet bus must not hold the last seconds of a trip
            self.archive.flush()

    def flush(self) -> None:
        self._send_dtc_changes()
        if self.recorder is not None:
            self.recorder.flush()
        if self.archive is not None:
            self.archive.flush()

    def close(self) -> None:
        if self.archive is not None:
            self.archive.close()
            self.archive.archive.close()
        if self.camera is not None:
            self.camera.stop()
        if self.camera_socket is not None:
            self.camera_socket.stop()
