"""``ConsentView``: what is granted right now, as an immutable snapshot the filter reads without locks."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from agent.model import ALL_CATEGORIES
from agent.privacy.config import ConsentConfig
from agent.privacy.consent import EXPIRY_SECONDS, ConsentState, Grant
from agent.privacy.transforms import ZoneCircle, level_rank


@dataclass(frozen=True)
class ConsentView:
    """What is granted right now, already narrowed by the configuration."""

    version: int
    grants: Mapping[str, Grant]
    zones: tuple[ZoneCircle, ...]
    bench: bool = False
    # Earliest expiry among the grants: the filter only asks the clock-driven
    # questions again once this passes.
    deadline: float = math.inf
    categories: frozenset[str] = field(default_factory=frozenset)

    def is_granted(self, category: str, now: float) -> bool:
        if self.bench:
            return True
        grant = self.grants.get(category)
        return grant is not None and now < grant.expires_at

    def level(self, category: str) -> str | None:
        grant = self.grants.get(category)
        return grant.level if grant is not None else None


def effective_grant(grant: Grant, config: ConsentConfig) -> Grant | None:
    """The grant as the configuration allows it, or None when the category is not grantable here."""
    if grant.category not in config.grantable:
        return None
    expires_at = min(grant.expires_at, grant.granted_at + EXPIRY_SECONDS[config.max_expiry])
    level = grant.level
    if level is not None and level_rank(level) > level_rank(config.finest_location_level):
        level = config.finest_location_level
    if expires_at == grant.expires_at and level == grant.level:
        return grant
    return replace(grant, expires_at=expires_at, level=level)


def build_view(state: ConsentState, config: ConsentConfig, bench: bool) -> ConsentView:
    if bench:
        return ConsentView(state.version, {}, (), True, math.inf, frozenset(ALL_CATEGORIES))
    grants = {}
    for name, grant in state.grants.items():
        effective = effective_grant(grant, config)
        if effective is not None:
            grants[name] = effective
    deadline = min((g.expires_at for g in grants.values()), default=math.inf)
    return ConsentView(state.version, grants, tuple(z.circle for z in state.zones), False, deadline,
                       frozenset(grants))


def coarser(new: Grant, old: Grant | None) -> bool:
    """Whether ``new`` keeps location coarser than ``old`` did (data collected under ``old`` is now too fine)."""
    return old is not None and old.level is not None and new.level is not None and \
        level_rank(new.level) < level_rank(old.level)


__all__ = ["ConsentView", "build_view", "coarser", "effective_grant"]
