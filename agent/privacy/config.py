"""The ``consent:`` section of the agent configuration.

The configuration can only *narrow* what an owner may grant, never grant
anything itself: under the China profile nothing is uploaded until the owner
opts in.  Example (the defaults)::

    consent:
      profile: china
      grantable: [vehicle_health, driving, location, charging, camera, identity, incident]
      max_expiry: 1y                    # drive | 7d | 90d | 1y
      finest_location_level: round3     # city | geohash5 | geohash6 | round3
      location_off_at_ignition: false   # true: location is switched off at every ignition

Listing ``cabin`` or ``unclassified`` as grantable is an error naming the line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from agent import schema
from agent.model import ALL_CATEGORIES
from agent.privacy.consent import GRANTABLE, NEVER_UPLOADED
from agent.yamlsrc import Located

SECTION = ("consent",)


@dataclass(frozen=True)
class ConsentConfig:
    profile: Literal["china"] = "china"
    grantable: list[str] = field(default_factory=lambda: list(GRANTABLE), metadata=schema.text(schema.ID))
    max_expiry: Literal["drive", "7d", "90d", "1y"] = "1y"
    finest_location_level: Literal["city", "geohash5", "geohash6", "round3"] = "round3"
    location_off_at_ignition: bool = False


def parse_consent(doc: Located | None, data: Any, path: tuple = SECTION) -> ConsentConfig:
    """Typed ``consent:`` section; errors read ``file:line: consent.key: problem``."""
    if doc is None:
        doc = Located("<defaults>", {}, {(): 1})
    config = schema.build(ConsentConfig, doc, path, data or {})
    seen: set[str] = set()
    for index, category in enumerate(config.grantable):
        where = (*path, "grantable", index)
        if category in NEVER_UPLOADED:
            raise doc.error(where, f"{category} can never be uploaded (China profile); remove it")
        if category not in ALL_CATEGORIES:
            raise doc.error(where, f"unknown category {category!r} (known: {', '.join(GRANTABLE)})")
        if category in seen:
            raise doc.error(where, f"{category} is listed twice")
        seen.add(category)
    return config


def consent_config(agent_config: Any) -> ConsentConfig:
    """The consent section of an ``AgentConfig`` (defaults when absent)."""
    return parse_consent(agent_config.document, agent_config.consent, SECTION)


__all__ = ["ConsentConfig", "consent_config", "parse_consent"]
