"""The owner's consent: categories, grants with purpose and expiry, location level, privacy zones.

This module is the data model and its rules only (no I/O, no clock of its
own).  ``ConsentState`` is an immutable snapshot; every change makes a new
state with the next ``version`` (``agent.privacy.store`` keeps one record per
change, ``agent.privacy.policy`` applies changes at run time).

China profile (the only profile, and the default): nothing is granted until
the owner opts in; ``cabin`` and ``unclassified`` can never be granted; a grant
always expires (``drive`` / ``7d`` / ``90d`` / ``1y``, nothing longer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from agent.ledger_chain import looks_personal
from agent.model import ALL_CATEGORIES, UNCLASSIFIED
from agent.privacy.transforms import LOCATION_LEVELS, ZoneCircle, level_rank

NEVER_UPLOADED = frozenset({"cabin", UNCLASSIFIED})
GRANTABLE = tuple(c for c in ALL_CATEGORIES if c not in NEVER_UPLOADED)

DAY = 86_400.0
# "drive" ends at the next ignition; it is also capped at one day so a grant
# can never outlive a forgotten drive.
EXPIRY_SECONDS = {"drive": DAY, "7d": 7 * DAY, "90d": 90 * DAY, "1y": 365 * DAY}
EXPIRY_CHOICES = tuple(EXPIRY_SECONDS)

# What each category covers, in the owner's words (``consent show``).
COVERS = {
    "vehicle_health": "fault codes, temperatures, voltages, component status",
    "driving": "speed, acceleration, pedals, steering, gear, distance travelled",
    "location": "where the car is (latitude/longitude, coarsened to the chosen level)",
    "charging": "battery state of charge, charging sessions, plug status",
    "camera": "camera images and clips",
    "cabin": "cabin and occupants: seats, belts, doors, climate, media (never uploaded)",
    "identity": "vehicle identity (VIN, serial numbers), only as a keyed pseudonym",
    "incident": "crash, airbag and emergency-braking events",
    UNCLASSIFIED: "signals without a catalog entry (never uploaded)",
}

ZONE_MIN_RADIUS_M = 50.0
ZONE_MAX_RADIUS_M = 100_000.0
PURPOSE_MAX_CHARS = 200


class ConsentError(ValueError):
    """A consent change that the rules refuse (printed as one line to the owner)."""


@dataclass(frozen=True)
class Grant:
    category: str
    purpose: str
    expiry: str  # one of EXPIRY_CHOICES
    granted_at: float
    expires_at: float
    level: str | None = None  # location only

    @property
    def per_drive(self) -> bool:
        return self.expiry == "drive"

    def active(self, now: float) -> bool:
        return now < self.expires_at

    def to_json(self) -> dict[str, Any]:
        return {"category": self.category, "purpose": self.purpose, "expiry": self.expiry,
                "granted_at": self.granted_at, "expires_at": self.expires_at, "level": self.level}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Grant:
        return cls(str(data["category"]), str(data["purpose"]), str(data["expiry"]), float(data["granted_at"]),
                   float(data["expires_at"]), data.get("level"))


@dataclass(frozen=True)
class Zone:
    """A privacy zone: inside it no location leaves the car, at any level."""

    id: str
    latitude: float
    longitude: float
    radius_m: float
    name: str = ""

    @property
    def circle(self) -> ZoneCircle:
        return ZoneCircle(self.latitude, self.longitude, self.radius_m)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "latitude": self.latitude, "longitude": self.longitude, "radius_m": self.radius_m,
                "name": self.name}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Zone:
        return cls(str(data["id"]), float(data["latitude"]), float(data["longitude"]), float(data["radius_m"]),
                   str(data.get("name", "")))


@dataclass(frozen=True)
class ConsentState:
    version: int = 0
    profile: str = "china"
    grants: dict[str, Grant] = field(default_factory=dict)
    zones: tuple[Zone, ...] = ()
    # The owner's per-drive option: location falls back to off at each ignition.
    location_off_at_ignition: bool = False
    next_zone: int = 1

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "profile": self.profile,
                "grants": {name: grant.to_json() for name, grant in sorted(self.grants.items())},
                "zones": [zone.to_json() for zone in self.zones],
                "location_off_at_ignition": self.location_off_at_ignition, "next_zone": self.next_zone}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConsentState:
        grants = {str(name): Grant.from_json(value) for name, value in (data.get("grants") or {}).items()}
        for name, grant in grants.items():
            check_grant(grant)
            if name != grant.category:
                raise ValueError(f"grant stored under {name!r} is for {grant.category!r}")
        return cls(int(data["version"]), str(data.get("profile", "china")), grants,
                   tuple(Zone.from_json(z) for z in data.get("zones") or ()),
                   bool(data.get("location_off_at_ignition", False)), int(data.get("next_zone", 1)))

    def active_grants(self, now: float) -> dict[str, Grant]:
        return {name: grant for name, grant in self.grants.items() if grant.active(now)}


@dataclass(frozen=True)
class ConsentChange:
    """One change to the consent state, as recorded in the store and the ledger.

    ``purge`` names the categories whose buffered data is no longer allowed
    (revocation, expiry, a narrower location level, a new privacy zone): the
    pipeline deletes their unsent batches.
    """

    version: int
    time: float
    kind: str  # grant, revoke, expire, narrow, zone_add, zone_remove, setting, ignition, recover
    source: str  # owner, network, clock, ignition, recovery
    category: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    purge: frozenset[str] = frozenset()

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "time": self.time, "kind": self.kind, "source": self.source,
                "category": self.category, "detail": self.detail, "purge": sorted(self.purge)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConsentChange:
        return cls(int(data["version"]), float(data["time"]), str(data["kind"]), str(data["source"]),
                   data.get("category"), dict(data.get("detail") or {}), frozenset(data.get("purge") or ()))


# -- rules -----------------------------------------------------------------------

def check_category(category: str) -> str:
    if category not in ALL_CATEGORIES:
        raise ConsentError(f"unknown category {category!r} (known: {', '.join(ALL_CATEGORIES)})")
    return category


def check_uploadable(category: str) -> str:
    check_category(category)
    if category in NEVER_UPLOADED:
        raise ConsentError(f"{category} can never be uploaded (China profile): it stays in the car")
    return category


def check_expiry(expiry: str) -> str:
    if expiry not in EXPIRY_SECONDS:
        raise ConsentError(f"expiry must be one of {', '.join(EXPIRY_CHOICES)} (nothing longer than 1y), "
                           f"got {expiry!r}")
    return expiry


def check_level(category: str, level: str | None) -> str | None:
    if category != "location":
        if level is not None:
            raise ConsentError(f"a precision level applies to location only, not {category}")
        return None
    if level is None:
        return LOCATION_LEVELS[0]
    if level not in LOCATION_LEVELS:
        raise ConsentError(f"unknown location level {level!r} (known, coarsest first: {', '.join(LOCATION_LEVELS)})")
    return level


def check_purpose(purpose: str) -> str:
    purpose = " ".join(purpose.split())
    if len(purpose) > PURPOSE_MAX_CHARS:
        raise ConsentError(f"purpose is longer than {PURPOSE_MAX_CHARS} characters")
    personal = looks_personal(purpose)
    if personal is not None:  # the purpose goes into the ledger, which never holds a personal value
        raise ConsentError(f"purpose looks like it holds a personal value ({personal}): say what the data is for, "
                           "in words")
    return purpose


def check_grant(grant: Grant) -> None:
    check_uploadable(grant.category)
    check_expiry(grant.expiry)
    check_level(grant.category, grant.level)
    if not grant.expires_at - grant.granted_at <= EXPIRY_SECONDS[grant.expiry] + 1e-6:
        raise ConsentError(f"{grant.category}: grant lasts longer than its expiry {grant.expiry}")


def make_grant(category: str, expiry: str, now: float, level: str | None = None, purpose: str | None = None) -> Grant:
    check_uploadable(category)
    check_expiry(expiry)
    level = check_level(category, level)
    text = check_purpose(purpose if purpose is not None else f"owner opted in: {COVERS[category]}")
    return Grant(category, text, expiry, now, now + EXPIRY_SECONDS[expiry], level)


def check_zone(latitude: float, longitude: float, radius_m: float) -> None:
    if not all(math.isfinite(v) for v in (latitude, longitude, radius_m)):
        raise ConsentError("zone centre and radius must be finite numbers")
    if not -90.0 <= latitude <= 90.0:
        raise ConsentError(f"zone latitude must be within -90..90, got {latitude}")
    if not -180.0 <= longitude <= 180.0:
        raise ConsentError(f"zone longitude must be within -180..180, got {longitude}")
    if not ZONE_MIN_RADIUS_M <= radius_m <= ZONE_MAX_RADIUS_M:
        raise ConsentError(f"zone radius must be within {ZONE_MIN_RADIUS_M:g}..{ZONE_MAX_RADIUS_M:g} m, got {radius_m}")


def with_version(state: ConsentState, version: int, **changes: Any) -> ConsentState:
    return replace(state, version=version, **changes)


__all__ = ["COVERS", "EXPIRY_CHOICES", "EXPIRY_SECONDS", "GRANTABLE", "LOCATION_LEVELS", "NEVER_UPLOADED",
           "ConsentChange", "ConsentError", "ConsentState", "Grant", "Zone", "check_category", "check_expiry",
           "check_grant", "check_level", "check_uploadable", "check_zone", "level_rank", "make_grant"]
