"""The owner's consent commands, as plain functions over a ``ConsentPolicy``.

The same handlers serve the control socket (running agent) and the CLI's
direct mode (agent stopped), so both behave identically.  Results are plain
JSON data; the CLI formats them.
"""

from __future__ import annotations

from typing import Any

from agent.model import ALL_CATEGORIES
from agent.privacy.consent import COVERS, NEVER_UPLOADED, ConsentChange, ConsentError
from agent.privacy.policy import OWNER, ConsentPolicy
from agent.privacy.transforms import APPROXIMATE_SIZE


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise ConsentError(f"{name} must be a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConsentError(f"{name} must be a number, got {value!r}") from None


def show(policy: ConsentPolicy) -> dict[str, Any]:
    now = policy.clock()
    view, state = policy.view, policy.state
    rows = []
    for category in ALL_CATEGORIES:
        grant = view.grants.get(category)
        if category in NEVER_UPLOADED:
            status = "never"
        elif category not in policy.config.grantable:
            status = "not allowed"
        elif view.bench or (grant is not None and grant.active(now)):
            status = "granted"
        else:
            status = "off"
        active = grant is not None and grant.active(now)
        rows.append({"category": category, "state": status,
                     "level": grant.level if active and grant.level else None,
                     "level_size": APPROXIMATE_SIZE.get(grant.level or "") if active and grant else None,
                     "expiry": grant.expiry if active else None,
                     "expires_at": grant.expires_at if active else None,
                     "purpose": grant.purpose if active else None,
                     "covers": COVERS[category]})
    return {"version": state.version, "profile": state.profile, "bench": view.bench, "categories": rows,
            "zones": len(state.zones), "location_off_at_ignition": policy.location_off_at_ignition()}


def _change(change: ConsentChange | None) -> dict[str, Any] | None:
    return None if change is None else change.to_json()


def grant(policy: ConsentPolicy, category: str, expiry: str, level: str | None = None,
          purpose: str | None = None) -> dict[str, Any] | None:
    return _change(policy.grant(category, expiry, level=level, purpose=purpose, source=OWNER))


def revoke(policy: ConsentPolicy, category: str) -> dict[str, Any] | None:
    return _change(policy.revoke(category, source=OWNER))


def zones_add(policy: ConsentPolicy, latitude: Any, longitude: Any, radius_m: Any, name: str = "") -> dict[str, Any]:
    zone = policy.add_zone(_number(latitude, "latitude"), _number(longitude, "longitude"),
                           _number(radius_m, "radius"), str(name or ""))
    return zone.to_json()


def zones_list(policy: ConsentPolicy) -> list[dict[str, Any]]:
    return [zone.to_json() for zone in policy.state.zones]


def zones_remove(policy: ConsentPolicy, zone_id: str) -> dict[str, Any] | None:
    return _change(policy.remove_zone(str(zone_id), source=OWNER))


def per_drive(policy: ConsentPolicy, enabled: bool) -> dict[str, Any] | None:
    if not isinstance(enabled, bool):
        raise ConsentError("enabled must be true or false")
    return _change(policy.set_location_off_at_ignition(enabled, source=OWNER))


def consent_commands(policy: ConsentPolicy) -> dict[str, Any]:
    """Handlers for ``ControlServer`` / ``CommandRegistry.update``."""
    return {
        "consent.show": lambda: show(policy),
        "consent.grant": lambda category, expiry, level=None, purpose=None: grant(policy, category, expiry, level,
                                                                                 purpose),
        "consent.revoke": lambda category: revoke(policy, category),
        "consent.zones.add": lambda latitude, longitude, radius_m, name="": zones_add(policy, latitude, longitude,
                                                                                      radius_m, name),
        "consent.zones.list": lambda: zones_list(policy),
        "consent.zones.remove": lambda zone_id: zones_remove(policy, zone_id),
        "consent.per_drive": lambda enabled: per_drive(policy, enabled),
    }


__all__ = ["consent_commands", "grant", "per_drive", "revoke", "show", "zones_add", "zones_list", "zones_remove"]
