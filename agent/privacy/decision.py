"""The one privacy decision: may this category, this position, this batch leave the car now, and in what form.

Every path that lets data out asks here, and nowhere else: the CAN privacy
filter (``agent.privacy.filter``), incident snapshots (``agent.incident.upload``),
camera events (``agent.camera.rules``), the store writer and the uplink's check
right before each publish (``agent.flow.gate``).  A second copy of one of these
rules is where a leak starts, so none of those modules holds one.

The rules (docs/privacy.md says them in words):

* a category leaves only while it is granted (bench mode: everything counts as
  granted); ``cabin`` can never be granted; a signal the catalog does not
  classify is ``unclassified`` and never leaves (except in bench mode);
* latitude/longitude (found by VSS path) always count as ``location``; of the
  location signals only latitude and longitude leave, each coarsened to the
  granted level; altitude, heading, accuracy and the like never leave;
* inside a privacy zone - or while the position is unknown and zones exist -
  no location leaves at all;
* ``identity`` values leave only as keyed pseudonyms (in bench mode too; bench mode otherwise
  keeps every location signal at full precision);
* an incident snapshot leaves only under ``incident`` consent, as incident data
  (its categories need no grant of their own), except ``cabin``, ``identity``
  and ``unclassified`` which never leave, and location which still needs
  ``location`` consent, coarsened and outside zones;
* a batch made under an older consent version may still go only when every
  category in it is granted now and no change since then asked to purge any
  of them (``batch_allowed``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from typing import Protocol

from agent.model import UNCLASSIFIED, SignalSpec
from agent.privacy.transforms import ZoneCircle, in_any_zone, latitude_coarsener, longitude_coarsener

LATITUDE_VSS = "Vehicle.CurrentLocation.Latitude"
LONGITUDE_VSS = "Vehicle.CurrentLocation.Longitude"
POSITION_PATHS = (LATITUDE_VSS, LONGITUDE_VSS)

# What happens to one signal on its way out.
KEEP, DROP, LATITUDE, LONGITUDE, PSEUDONYM = range(5)

INCIDENT = "incident"
# Never part of an uploaded incident snapshot, whatever is granted.
NEVER_IN_INCIDENTS = frozenset({"cabin", "identity", UNCLASSIFIED})


class ViewLike(Protocol):
    """What the decision reads of ``agent.privacy.view.ConsentView``."""

    version: int
    bench: bool
    zones: tuple[ZoneCircle, ...]

    def is_granted(self, category: str, now: float) -> bool: ...

    def level(self, category: str) -> str | None: ...


def category_of(spec: SignalSpec | None) -> str:
    """A signal's privacy category: the catalog's, except that latitude/longitude are always location."""
    if spec is None:
        return UNCLASSIFIED
    if spec.vss_path in POSITION_PATHS:
        return "location"
    return spec.category


def signal_action(view: ViewLike, spec: SignalSpec, now: float, *, can_pseudonymize: bool = True,
                  incident: bool = False) -> int:
    """KEEP, DROP, LATITUDE, LONGITUDE or PSEUDONYM for one signal under ``view`` at ``now``.

    ``incident``: the signal is part of an incident snapshot whose upload ``incident`` consent allowed."""
    category = category_of(spec)
    if incident:
        if category in NEVER_IN_INCIDENTS:
            return DROP
        if category != "location":
            return KEEP
    if not view.is_granted(category, now):
        return DROP
    if category == "identity":
        return PSEUDONYM if can_pseudonymize else DROP
    if category == "location" and not (view.bench and not incident):  # bench: full precision
        if spec.vss_path == LATITUDE_VSS:
            return LATITUDE
        if spec.vss_path == LONGITUDE_VSS:
            return LONGITUDE
        return DROP  # only coarsened latitude/longitude ever leave
    return KEEP


def unknown_signal_action(view: ViewLike) -> int:
    """A signal the specs do not know: unclassified, dropped (fail closed) unless in bench mode."""
    return KEEP if view.bench else DROP


def position_coarseners(view: ViewLike) -> tuple[Callable[[float], float], Callable[[float], float]] | None:
    """(latitude, longitude) transforms for the granted location level; exact in bench mode without a level;
    None when no position may leave in any form."""
    level = view.level("location")
    if level:
        return latitude_coarsener(level), longitude_coarsener(level)
    if view.bench:
        return _exact, _exact
    return None  # granted without a level cannot happen: fail closed if it does


def location_suppressed(view: ViewLike, latitude: float, longitude: float) -> bool:
    """Whether no location may leave at this position: inside a privacy zone, or position unknown while
    zones exist (fail closed)."""
    zones = view.zones
    if not zones:
        return False
    if math.isnan(latitude) or math.isnan(longitude):
        return True
    return in_any_zone(zones, latitude, longitude)


def position_form(view: ViewLike, latitude: float, longitude: float, now: float) -> tuple[float, float] | None:
    """The position as it may leave (coarsened to the owner's level), or None when it stays in the car."""
    if not view.is_granted("location", now) or location_suppressed(view, latitude, longitude):
        return None
    coarseners = position_coarseners(view)
    if coarseners is None:
        return None
    return coarseners[0](latitude), coarseners[1](longitude)


class PolicyHistory(Protocol):
    """What ``batch_allowed`` reads of ``agent.privacy.policy.ConsentPolicy``."""

    bench: bool

    @property
    def view(self) -> ViewLike: ...

    def clock(self) -> float: ...

    def changes_since(self, version: int) -> list: ...


def batch_allowed(policy: PolicyHistory, categories: Collection[str], consent_version: int) -> bool:
    """Whether a batch made under ``consent_version`` holding ``categories`` may be stored for upload or
    published now: every category granted now, and no change since then asked to purge any of them.
    Call it holding ``policy.lock`` so that check-and-act cannot interleave with a purge."""
    if policy.bench:
        return True
    view, now = policy.view, policy.clock()
    if not categories or not all(view.is_granted(c, now) for c in categories):
        return False
    if consent_version == view.version:
        return True
    expected = consent_version
    for change in policy.changes_since(consent_version):
        # A "reload" (state written by another process) may cover several versions at once.
        start = change.detail.get("from_version", change.version - 1) if change.kind == "reload" else \
            change.version - 1
        if start != expected:
            return False  # history does not reach back that far: fail closed
        if change.purge.intersection(categories):
            return False
        expected = change.version
    return expected == view.version


def _exact(value: float) -> float:
    return value


__all__ = ["DROP", "INCIDENT", "KEEP", "LATITUDE", "LATITUDE_VSS", "LONGITUDE", "LONGITUDE_VSS",
           "NEVER_IN_INCIDENTS", "POSITION_PATHS", "PSEUDONYM", "batch_allowed", "category_of",
           "location_suppressed", "position_coarseners", "position_form", "signal_action",
           "unknown_signal_action"]
