"""Exports as the owner asks for them, from the CLI or the owner's page: what goes in, and the ledger line
that says an export was made.  The writers (agent/export/writer.py) know the files; this knows the car."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from agent.export.signing import load_or_create_key
from agent.export.writer import MANIFEST, ExportResult, export_incident
from agent.incident.config import incident_config
from agent.incident.store import IncidentStore
from agent.ledger import Ledger
from agent.privacy.store import ConsentStore


def dbc_paths(config: Any) -> list[Path]:
    paths: list[Path] = []
    for bus in config.buses:
        for dbc in bus.dbc:
            path = config.resolve(dbc).resolve()
            if path not in paths:
                paths.append(path)
    return paths


def consent_history(state_dir: Path) -> list[dict]:
    return [change.to_json() for change in ConsentStore.in_dir(state_dir).history()]


def incident_store(config: Any) -> IncidentStore:
    return IncidentStore.from_config(config.resolve(config.state.dir), incident_config(config), create=False)


def export_one_incident(config: Any, incident_id: str, out_dir: str | Path) -> ExportResult:
    """A signed export of one stored incident snapshot, recorded in the ledger."""
    state_dir = config.resolve(config.state.dir)
    store = incident_store(config)
    info = store.info(incident_id)
    ledger = Ledger.in_dir(state_dir)
    entries = [entry.to_json() for entry in ledger.entries(since=info.start)]
    result = export_incident(store, incident_id, out_dir, load_or_create_key(state_dir), dbc_paths(config),
                             consent_history(state_dir), entries, config.vehicle.id, ledger.head())
    record_export(state_dir, incident_id, result)
    return result


def record_export(state_dir: Path, what: str, result: ExportResult) -> None:
    manifest_sha256 = hashlib.sha256((result.out_dir / MANIFEST).read_bytes()).hexdigest()
    Ledger.in_dir(state_dir).record_export(
        export=what, files=len(result.files), samples=result.samples, frames=result.frames,
        manifest_sha256=manifest_sha256, key_fingerprint=result.fingerprint)
