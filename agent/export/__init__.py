"""The owner's signed export of an incident or a time range, and its verification."""

from agent.export.signing import load_or_create_key
from agent.export.verify import VerifyResult, verify_export
from agent.export.writer import ExportResult, export_incident, export_range

__all__ = ["ExportResult", "VerifyResult", "export_incident", "export_range", "load_or_create_key", "verify_export"]
