"""Incident snapshots: trigger, capture of raw + decoded frames, local storage, upload batches."""

from agent.incident.config import IncidentConfig, incident_config, parse_incidents
from agent.incident.snapshot import IncidentRecorder, Snapshot, TriggerHit
from agent.incident.store import IncidentInfo, IncidentStore, StoredSnapshot

__all__ = ["IncidentConfig", "IncidentInfo", "IncidentRecorder", "IncidentStore", "Snapshot", "StoredSnapshot",
           "TriggerHit", "incident_config", "parse_incidents"]
