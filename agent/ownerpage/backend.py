"""What the owner's page can see and do, behind one small interface (the web layer only renders it).

Every consent change goes through the one consent gateway (agent/privacy/gateway.py: the running agent's
control socket, or the state files with the agent stopped), exactly as the CLI's; exports through
agent/export/service.py; the ledger is read, never written here except for "forget me".
"""

from __future__ import annotations

import io
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.buffer import BatchStore
from agent.export.anchor import signing_key_fingerprint
from agent.export.service import export_one_incident, incident_store
from agent.export.verify import verify_export
from agent.ledger import Ledger
from agent.ownerpage.config import archive_path
from agent.ownerpage.timeline import Day, timeline
from agent.privacy.config import consent_config
from agent.privacy.gateway import consent_call
from agent.privacy.pseudonym import KEY_FILE as PSEUDONYM_KEY_FILE


@dataclass(frozen=True)
class IncidentExport:
    name: str
    data: bytes  # the zip
    verified: bool
    problems: tuple[str, ...]
    fingerprint: str


class OwnerBackend:
    def __init__(self, config: Any, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.state_dir = Path(config.resolve(config.state.dir))
        self._consent_config = consent_config(config)
        self._clock = clock

    # -- sharing ------------------------------------------------------------------------------------
    def consent(self, cmd: str, **request: Any) -> tuple[Any, bool]:
        return consent_call(self.state_dir, self._consent_config, cmd, request)

    def sharing(self) -> dict[str, Any]:
        shown, running = self.consent("consent.show")
        zones, _ = self.consent("consent.zones.list")
        return {**shown, "zones": zones, "running": running}

    def unsent_with(self, category: str) -> int:
        """Batches not yet sent that hold ``category``: what revoking it deletes."""
        path = self.config.buffer_path()
        if not path.exists():
            return 0
        with BatchStore(path, read_only=True) as store:
            return store.unsent_with(category)

    def purged_since(self, since: float) -> int:
        """Batches the ledger says were purged since ``since`` (the agent purges at the change)."""
        return sum(int(e.fields.get("batches") or 0) for e in self.ledger().entries(since=since)
                   if e.kind == "purge")

    # -- what left ----------------------------------------------------------------------------------
    def ledger(self) -> Ledger:
        return Ledger.in_dir(self.state_dir, repair=False)

    def days(self) -> list[Day]:
        return timeline(self.ledger().entries())

    def ledger_status(self) -> str:
        return str(self.ledger().verify())

    # -- incidents ----------------------------------------------------------------------------------
    def incidents(self) -> list[Any]:
        try:
            return incident_store(self.config).list()
        except (OSError, ValueError):
            return []

    def fingerprint(self) -> str:
        return signing_key_fingerprint(self.state_dir, create=False) or "not made yet"

    def export_incident(self, incident_id: str) -> IncidentExport:
        work = Path(tempfile.mkdtemp(prefix="owner-export-"))
        try:
            out = work / incident_id
            result = export_one_incident(self.config, incident_id, out)
            verified = verify_export(out)
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
                for path in sorted(out.rglob("*")):
                    if path.is_file():
                        archive.write(path, f"{incident_id}/{path.relative_to(out)}")
            return IncidentExport(f"{incident_id}.zip", buffer.getvalue(), verified.ok,
                                  tuple(str(p) for p in verified.problems), result.fingerprint)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    # -- my data ------------------------------------------------------------------------------------
    def archive(self):
        from agent.owner.archive import OwnerArchive

        settings = self._page_config().archive
        return OwnerArchive(archive_path(self.state_dir), retention_days=settings.retention_days,
                            max_bytes=int(settings.max_mb * 1_000_000))

    def _page_config(self):
        from agent.ownerpage.config import owner_page_config

        return owner_page_config(self.config)

    # -- what the backend holds ----------------------------------------------------------------------
    EXPORT_FILES = ("manifest.json", "batches.jsonl", "samples.csv")

    def reconcile(self, files: dict[str, bytes]):
        """Compare the backend's data-access export (its three files, uploaded by the owner) with the
        ledger: batches held, missing, and shown but never sent from this car."""
        from agent.reconcile import reconcile_dir

        names = {Path(name or "").name: data for name, data in files.items()}
        missing = [name for name in self.EXPORT_FILES if name not in names]
        if missing:
            raise ValueError(f"the backend's export needs {', '.join(self.EXPORT_FILES)}; missing: "
                             f"{', '.join(missing)}")
        work = Path(tempfile.mkdtemp(prefix="owner-backend-"))
        try:
            for name in self.EXPORT_FILES:
                (work / name).write_bytes(names[name])
            return reconcile_dir(work, self.state_dir)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    # -- handing the car over -----------------------------------------------------------------------
    def forget_me(self) -> dict[str, int]:
        """Wipe consent (every category revoked, every zone removed: through the policy, so purges and the
        ledger happen as for any change), the owner archive and the pseudonym key; the ledger says so."""
        revoked = 0
        for row in self.sharing()["categories"]:
            if row["state"] == "granted":
                result, _ = self.consent("consent.revoke", category=row["category"])
                revoked += result is not None
        zones, _ = self.consent("consent.zones.list")
        for zone in zones:
            self.consent("consent.zones.remove", zone_id=zone["id"])
        archive = self.archive()
        try:
            trips = len(archive.trips())
            archive.forget()
        finally:
            archive.close()
        key = self.state_dir / PSEUDONYM_KEY_FILE
        had_key = key.exists()
        key.unlink(missing_ok=True)
        self.ledger().record_forget_me(revoked, len(zones), trips, "deleted" if had_key else "none")
        return {"revoked": revoked, "zones": len(zones), "trips": trips}
