"""Inputs beside the CAN data path: incident snapshots and camera events.

Both hang off the pipeline (raw frames, decoded frames) and produce their own
batches, which go into the same store as telemetry (incident: highest
priority, never evicted; camera: above telemetry).  Camera records arrive on
other threads (spool watcher, socket) and are handed to the pipeline thread
through a bounded queue; drops are counted.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.buffer.store import BatchStore
from agent.camera.config import CameraConfig
from agent.camera.rules import camera_decision
from agent.camera.socket_in import CameraSocketServer
from agent.camera.spool import SpoolWatcher
from agent.camera.upload import camera_batch
from agent.incident.config import IncidentConfig
from agent.incident.snapshot import IncidentRecorder, Snapshot
from agent.incident.store import IncidentStore
from agent.incident.upload import snapshot_batches
from agent.pipeline import Pipeline

log = logging.getLogger(__name__)


@dataclass
class SidecarCounters:
    snapshots: int = 0
    snapshot_batches: int = 0
    camera_events: int = 0
    camera_uploaded: int = 0
    camera_kept_in_car: int = 0
    camera_dropped_queue_full: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass
class Sidecars:
    """Incident recorder + camera intake for one pipeline."""

    pipeline: Pipeline
    store: BatchStore
    policy: Any
    vehicle_id: str
    notify: Callable[[], None]
    incidents: IncidentStore | None = None
    recorder: IncidentRecorder | None = None
    camera: SpoolWatcher | None = None
    camera_socket: CameraSocketServer | None = None
    counters: SidecarCounters = field(default_factory=SidecarCounters)
    _events: queue.Queue = field(default_factory=lambda: queue.Queue(maxsize=1024))

    # -- set-up ------------------------------------------------------------------
    def attach_incidents(self, config: IncidentConfig, state_dir: Path) -> None:
        self.incidents = IncidentStore.from_config(state_dir, config)
        self.recorder = IncidentRecorder(config, self.pipeline.decoder.specs, self._on_snapshot)
        self.pipeline.raw_listeners.append(self.recorder.on_raw)
        self.pipeline.frame_listeners.append(self.recorder.on_frame)

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
    def _seq(self) -> int:
        return self.store.next_seq(self.pipeline.boot_id)

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        assert self.incidents is not None
        info = self.incidents.save(snapshot)
        self.counters.snapshots += 1
        stored = self.incidents.load(info.id)
        batches = snapshot_batches(stored, self.policy, self.vehicle_id, self.pipeline.boot_id, self._seq)
        for batch in batches:
            self.store.add(batch)
        self.counters.snapshot_batches += len(batches)
        if batches:
            self.notify()
        log.info("incident snapshot %s saved (%d upload batches)", info.id, len(batches))

    def poll(self, now: float) -> None:
        """Drain camera events and close incident windows that are due (call about once a second)."""
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
            batch = camera_batch(outgoing, self.vehicle_id, self.pipeline.boot_id, self._seq(),
                                 self.policy.version, bench=self.policy.bench)
            self.store.add(batch)
            self.counters.camera_uploaded += len(outgoing)
            self.notify()
        if self.recorder is not None:
            self.recorder.close_due(now)

    def flush(self) -> None:
        if self.recorder is not None:
            self.recorder.flush()

    def close(self) -> None:
        if self.camera is not None:
            self.camera.stop()
        if self.camera_socket is not None:
            self.camera_socket.stop()
