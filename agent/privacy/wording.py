"""Consent changes as people read them: ``consent history``, the ledger's entries, the owner's page."""

from __future__ import annotations

from typing import Any

from agent.timespec import iso_local


def describe_change(version: int, kind: str, category: str | None, source: str, detail: dict[str, Any]) -> str:
    """One consent change in a line: "consent v3: grant location by owner (level city, until ...)"."""
    extra = ", ".join(f"{k} {v}" for k, v in sorted(detail.items()) if k != "expires_at")
    if detail.get("expires_at"):
        extra = (extra + ", " if extra else "") + f"until {iso_local(detail['expires_at'])}"
    subject = f" {category}" if category else ""
    return f"consent v{version}: {kind}{subject} by {source}" + (f" ({extra})" if extra else "")
