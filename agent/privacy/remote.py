"""Consent commands from the network: they may narrow, never widen.

Only the owner, on the car, can grant.  A message from the backend (MQTT
command, remote configuration) may revoke a category, coarsen the location
level, bring an expiry forward or switch on the per-drive location option.
Anything else - grant, longer expiry, finer level, removing a privacy zone,
unknown or malformed commands - is refused, logged as a warning without any
personal data, and recorded in the ledger.

Command payload (JSON object)::

    {"action": "revoke", "category": "location"}
    {"action": "narrow", "category": "location", "level": "city"}
    {"action": "narrow", "category": "driving", "expires_at": 1718000000}
    {"action": "location_off_at_ignition"}
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import replace
from typing import Any

from agent.ledger import Ledger
from agent.model import ALL_CATEGORIES
from agent.privacy.config import ConsentConfig
from agent.privacy.consent import EXPIRY_SECONDS, ConsentError
from agent.privacy.policy import NETWORK, ConsentPolicy
from agent.privacy.transforms import LOCATION_LEVELS, level_rank

log = logging.getLogger(__name__)

MAX_PAYLOAD = 4096
_ACTION_RE = re.compile(r"^[a-z_]{1,32}$")


def _safe_action(value: Any) -> str:
    return value if isinstance(value, str) and _ACTION_RE.match(value) else "<invalid>"


def _safe_category(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) and value in ALL_CATEGORIES else "<unknown>"


def _refuse(ledger: Ledger | None, action: str, category: str | None, reason: str) -> tuple[bool, str]:
    log.warning("refused consent command from the network: %s (action=%s, category=%s)", reason, action, category)
    if ledger is not None:
        ledger.record_remote_refused(action, category, reason)
    return False, reason


def handle_remote_command(payload: bytes, policy: ConsentPolicy, ledger: Ledger | None = None) -> tuple[bool, str]:
    """Apply a network consent command if it only narrows; returns (accepted, reason)."""
    if len(payload) > MAX_PAYLOAD:
        return _refuse(ledger, "<invalid>", None, f"command larger than {MAX_PAYLOAD} bytes")
    try:
        command = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return _refuse(ledger, "<invalid>", None, "not a JSON object")
    if not isinstance(command, dict):
        return _refuse(ledger, "<invalid>", None, "not a JSON object")
    action, category = _safe_action(command.get("action")), _safe_category(command.get("category"))
    if category == "<unknown>":
        return _refuse(ledger, action, category, "unknown category")
    try:
        if action == "revoke" and category is not None:
            change = policy.revoke(category, source=NETWORK)
            return True, f"{category} revoked" if change else f"{category} was not granted"
        if action == "narrow" and category is not None and "level" in command:
            if category != "location":
                return _refuse(ledger, action, category, "a level applies to location only")
            policy.narrow_level(str(command["level"]), source=NETWORK)
            return True, f"location narrowed to {command['level']}"
        if action == "narrow" and category is not None and "expires_at" in command:
            expires_at = command["expires_at"]
            if isinstance(expires_at, bool) or not isinstance(expires_at, (int, float)) or \
                    not math.isfinite(expires_at):
                return _refuse(ledger, action, category, "expires_at must be a time in seconds")
            policy.shorten(category, float(expires_at), source=NETWORK)
            return True, f"{category} now expires earlier"
        if action == "location_off_at_ignition":
            policy.set_location_off_at_ignition(True, source=NETWORK)
            return True, "location now switches off at each ignition"
    except ConsentError as exc:
        return _refuse(ledger, action, category, f"would not narrow consent: {exc}")
    return _refuse(ledger, action, category, "the network can only narrow consent (revoke, narrow); "
                                             "granting is for the owner in the car")


def narrow_config(current: ConsentConfig, remote: dict[str, Any]) -> ConsentConfig:
    """Combine a remotely delivered ``consent`` section with the local one, keeping only narrowings:
    the intersection of grantable categories, the shorter maximum expiry, the coarser finest level,
    and the per-drive option if either side sets it.  Unknown keys are ignored (and logged)."""
    grantable = current.grantable
    if isinstance(remote.get("grantable"), list):
        grantable = [c for c in current.grantable if c in remote["grantable"]]
    max_expiry = current.max_expiry
    if remote.get("max_expiry") in EXPIRY_SECONDS and \
            EXPIRY_SECONDS[remote["max_expiry"]] < EXPIRY_SECONDS[current.max_expiry]:
        max_expiry = remote["max_expiry"]
    finest = current.finest_location_level
    if remote.get("finest_location_level") in LOCATION_LEVELS and \
            level_rank(remote["finest_location_level"]) < level_rank(finest):
        finest = remote["finest_location_level"]
    off = current.location_off_at_ignition or remote.get("location_off_at_ignition") is True
    ignored = sorted(set(remote) - {"grantable", "max_expiry", "finest_location_level", "location_off_at_ignition",
                                    "profile"})
    if ignored:
        log.warning("remote consent configuration: ignored keys %s", ", ".join(_safe_action(k) for k in ignored))
    return replace(current, grantable=grantable, max_expiry=max_expiry, finest_location_level=finest,
                   location_off_at_ignition=off)


__all__ = ["handle_remote_command", "narrow_config"]
