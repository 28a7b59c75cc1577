"""The consent in force: evaluates grants against a clock and applies the owner's changes.

``ConsentPolicy`` owns the consent state at run time.  Reads go through an
immutable ``ConsentView`` swapped atomically on every change, so the privacy
filter (per frame) never takes a lock.  Every change is made durable first
(``ConsentStore``), then gets the next ``version``, then the ``on_change``
callbacks run (flush/purge batches, purge the uplink, write the ledger).

The configuration narrows what the view grants (categories an owner may
grant, longest expiry, finest location level); it can never widen.

Bench mode (``grant_all``) is for engineers replaying log files: every category
counts as granted, location keeps full precision, and nothing can be changed.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from agent.privacy.config import ConsentConfig
from agent.privacy.consent import (
    EXPIRY_SECONDS,
    ConsentChange,
    ConsentError,
    ConsentState,
    Zone,
    check_category,
    check_expiry,
    check_level,
    check_zone,
    make_grant,
)
from agent.privacy.store import ConsentStore
from agent.privacy.transforms import level_rank
from agent.privacy.view import ConsentView, build_view, coarser, effective_grant

ChangeCallback = Callable[[ConsentChange], None]
OWNER = "owner"
NETWORK = "network"


class ConsentPolicy:
    """The running consent.  ``store=None`` keeps the state in memory only (demo, tests)."""

    def __init__(self, store: ConsentStore | None = None, config: ConsentConfig | None = None,
                 clock: Callable[[], float] = time.time, grant_all: bool = False,
                 state: ConsentState | None = None, history_limit: int = 256) -> None:
        self.store = store
        self.config = config or ConsentConfig()
        self.clock = clock
        self.bench = grant_all
        if state is None:
            state = store.load() if store is not None else ConsentState()
        self._state = state
        self._view = build_view(state, self.config, grant_all)
        # Held while a change is applied and its callbacks run.  ``batch_allowed`` checks
        # under it too, so "check consent, then store a batch" cannot interleave with a purge.
        self.lock = threading.RLock()
        self._callbacks: list[ChangeCallback] = []
        self._history: deque[ConsentChange] = deque(maxlen=history_limit)
        self._store_stamp = store.stamp() if store is not None else None

    # -- reading (lock-free: the view is immutable and swapped whole) ---------------
    @property
    def view(self) -> ConsentView:
        return self._view

    @property
    def version(self) -> int:
        return self._view.version

    @property
    def state(self) -> ConsentState:
        return self._state

    def is_granted(self, category: str, now: float | None = None) -> bool:
        return self._view.is_granted(category, self.clock() if now is None else now)

    def level(self, category: str) -> str | None:
        return self._view.level(category)

    def expires_at(self, category: str) -> float | None:
        grant = self._view.grants.get(category)
        return grant.expires_at if grant is not None else None

    def location_off_at_ignition(self) -> bool:
        return self.config.location_off_at_ignition or self._state.location_off_at_ignition

    # -- callbacks ------------------------------------------------------------------
    def on_change(self, callback: ChangeCallback) -> ChangeCallback:
        """Call ``callback(change)`` after every change is durable (in the changing thread)."""
        self._callbacks.append(callback)
        return callback

    def changes_since(self, version: int) -> list[ConsentChange]:
        with self.lock:
            return [change for change in self._history if change.version > version]

    # -- changes ----------------------------------------------------------------------
    def _commit(self, make: Callable[[ConsentState, float], tuple[str, str | None, dict, frozenset, dict] | None],
                source: str) -> ConsentChange | None:
        """Apply ``make(state, now) -> (kind, category, detail, purge, new fields)`` durably."""
        if self.bench:
            raise ConsentError("bench mode (--grant-all): consent cannot be changed")
        with self.lock:
            now = self.clock()
            if self.store is None:
                return self._apply(self._state, make, source, now, None)
            with self.store.transaction(now) as txn:
                if txn.recovered is not None:
                    self._publish(txn.recovered, txn.state)
                elif txn.state.version != self._state.version:
                    self._adopt(txn.state, now)
                return self._apply(txn.state, make, source, now, txn)

    def _apply(self, current: ConsentState, make, source: str, now: float, txn: Any) -> ConsentChange | None:
        result = make(current, now)
        if result is None:
            return None
        kind, category, detail, purge, fields = result
        state = replace(current, version=current.version + 1, **fields)
        change = ConsentChange(state.version, now, kind, source, category, detail, purge)
        if txn is not None:
            txn.commit(change, state)
            self._store_stamp = self.store.stamp() if self.store is not None else None
        self._publish(change, state)
        return change

    def _publish(self, change: ConsentChange, state: ConsentState) -> None:
        self._state = state
        self._view = build_view(state, self.config, self.bench)
        self._history.append(change)
        for callback in list(self._callbacks):
            callback(change)

    def _adopt(self, disk: ConsentState, now: float) -> ConsentChange | None:
        """Take over a state written by another process (the CLI while the socket was down)."""
        old = self._state
        lost = {name for name, grant in old.grants.items()
                if name not in disk.grants or coarser(disk.grants[name], grant)}
        if len(disk.zones) > len(old.zones) or {z.id for z in disk.zones} - {z.id for z in old.zones}:
            lost.add("location")
        change = ConsentChange(disk.version, now, "reload", "store", None, {"from_version": old.version},
                               frozenset(lost))
        self._publish(change, disk)
        return change

    def tick(self, now: float | None = None) -> list[ConsentChange]:
        """Call about once a second from the pipeline: adopts changes another process wrote to the state
        file (the CLI while the control socket was unreachable) and records expiries even with no frames."""
        changes = []
        if self.store is not None and not self.bench and self.store.stamp() != self._store_stamp:
            change = self.reload()
            if change is not None:
                changes.append(change)
        expired = self.expire_due(now)
        if expired is not None:
            changes.append(expired)
        return changes

    def reload(self) -> ConsentChange | None:
        """Re-read the store; returns the resulting change when the state moved on."""
        if self.store is None or self.bench:
            return None
        with self.lock:
            self._store_stamp = self.store.stamp()
            disk = self.store.load()
            if disk.version == self._state.version and not self.store.problem:
                return None
            if self.store.problem:
                with self.store.transaction(self.clock()) as txn:
                    if txn.recovered is not None:
                        self._publish(txn.recovered, txn.state)
                        return txn.recovered
                    disk = txn.state
            return self._adopt(disk, self.clock())

    def grant(self, category: str, expiry: str, level: str | None = None, purpose: str | None = None,
              source: str = OWNER) -> ConsentChange:
        if source == NETWORK:
            raise ConsentError("the network cannot grant consent")
        check_expiry(expiry)
        if category not in self.config.grantable:
            make_grant(category, expiry, 0.0, level, purpose)  # the specific reason, if the rules refuse it
            raise ConsentError(f"{category} is not grantable on this vehicle (consent.grantable in the configuration)")
        if EXPIRY_SECONDS[expiry] > EXPIRY_SECONDS[self.config.max_expiry]:
            raise ConsentError(f"expiry {expiry} is longer than this vehicle allows ({self.config.max_expiry})")
        level = check_level(category, level)
        if level is not None and level_rank(level) > level_rank(self.config.finest_location_level):
            raise ConsentError(f"level {level} is finer than this vehicle allows ({self.config.finest_location_level})")

        def make(state: ConsentState, now: float):
            grant = make_grant(category, expiry, now, level, purpose)
            old = state.grants.get(category)
            purge = frozenset({category}) if coarser(grant, old) else frozenset()
            detail = {"expiry": expiry, "expires_at": grant.expires_at, "level": grant.level,
                      "purpose": grant.purpose}
            return "grant", category, detail, purge, {"grants": {**state.grants, category: grant}}

        change = self._commit(make, source)
        assert change is not None
        return change

    def revoke(self, category: str, source: str = OWNER) -> ConsentChange | None:
        """Revoke a grant; None when it was not granted (nothing to do)."""
        check_category(category)

        def make(state: ConsentState, now: float):
            if category not in state.grants:
                return None
            grants = {k: v for k, v in state.grants.items() if k != category}
            return "revoke", category, {}, frozenset({category}), {"grants": grants}

        return self._commit(make, source)

    def narrow_level(self, level: str, source: str = OWNER) -> ConsentChange:
        """Make the location grant coarser (never finer): allowed from the network too."""
        check_level("location", level)

        def make(state: ConsentState, now: float):
            grant = state.grants.get("location")
            if grant is None:
                raise ConsentError("location is not granted")
            if level_rank(level) >= level_rank(grant.level or "city"):
                raise ConsentError(f"{level} is not coarser than the granted level {grant.level}")
            grants = {**state.grants, "location": replace(grant, level=level)}
            return "narrow", "location", {"level": level, "was": grant.level}, frozenset({"location"}), \
                {"grants": grants}

        change = self._commit(make, source)
        assert change is not None
        return change

    def shorten(self, category: str, expires_at: float, source: str = OWNER) -> ConsentChange:
        """Move a grant's expiry earlier (never later): allowed from the network too."""
        check_category(category)

        def make(state: ConsentState, now: float):
            grant = state.grants.get(category)
            if grant is None:
                raise ConsentError(f"{category} is not granted")
            if not expires_at < grant.expires_at:
                raise ConsentError(f"{category}: the new expiry is not earlier than the current one")
            grants = {**state.grants, category: replace(grant, expires_at=max(now, expires_at))}
            return "narrow", category, {"expires_at": expires_at}, frozenset(), {"grants": grants}

        change = self._commit(make, source)
        assert change is not None
        return change

    def add_zone(self, latitude: float, longitude: float, radius_m: float, name: str = "",
                 source: str = OWNER) -> Zone:
        check_zone(latitude, longitude, radius_m)
        added: list[Zone] = []

        def make(state: ConsentState, now: float):
            zone = Zone(f"z{state.next_zone}", latitude, longitude, radius_m, " ".join(name.split())[:60])
            added.append(zone)
            # The change (and so the ledger) never carries the centre: it is a personal place.
            return "zone_add", "location", {"zone": zone.id, "radius_m": radius_m}, frozenset({"location"}), \
                {"zones": (*state.zones, zone), "next_zone": state.next_zone + 1}

        self._commit(make, source)
        return added[0]

    def remove_zone(self, zone_id: str, source: str = OWNER) -> ConsentChange:
        if source == NETWORK:
            raise ConsentError("the network cannot remove a privacy zone")

        def make(state: ConsentState, now: float):
            zones = tuple(z for z in state.zones if z.id != zone_id)
            if len(zones) == len(state.zones):
                raise ConsentError(f"no privacy zone {zone_id!r} (see `consent zones list`)")
            return "zone_remove", "location", {"zone": zone_id}, frozenset(), {"zones": zones}

        change = self._commit(make, source)
        assert change is not None
        return change

    def set_location_off_at_ignition(self, enabled: bool, source: str = OWNER) -> ConsentChange | None:
        if source == NETWORK and not enabled:
            raise ConsentError("the network cannot turn the per-drive location option off")

        def make(state: ConsentState, now: float):
            if state.location_off_at_ignition == enabled:
                return None
            return "setting", "location", {"location_off_at_ignition": enabled}, frozenset(), \
                {"location_off_at_ignition": enabled}

        return self._commit(make, source)

    def apply_config(self, config: ConsentConfig, source: str = "config") -> ConsentChange | None:
        """Use a new (narrowed) configuration, e.g. from ``remote.narrow_config``; a new version when the
        view changes, purging the categories that lost their grant or got a coarser level."""
        old_view = self._view
        new_view = build_view(self._state, config, self.bench)
        lost = {name for name, grant in old_view.grants.items()
                if name not in new_view.grants or coarser(new_view.grants[name], grant)}
        if new_view.grants == old_view.grants:
            self.config = config
            return None

        def make(state: ConsentState, now: float):
            self.config = config  # read by _publish when it builds the new view
            detail = {"grantable": list(config.grantable), "max_expiry": config.max_expiry,
                      "level": config.finest_location_level}
            return "config", None, detail, frozenset(lost), {}

        return self._commit(make, source)

    def on_ignition(self) -> ConsentChange | None:
        """A new drive starts: drive-long grants end, and location too if the per-drive option is on."""
        if self.bench:
            return None
        off_at_ignition = self.location_off_at_ignition()

        def make(state: ConsentState, now: float):
            ended = {name for name, grant in state.grants.items()
                     if grant.per_drive or (name == "location" and off_at_ignition)}
            if not ended:
                return None
            grants = {k: v for k, v in state.grants.items() if k not in ended}
            return "ignition", None, {"ended": sorted(ended)}, frozenset(ended), {"grants": grants}

        return self._commit(make, "ignition")

    def expire_due(self, now: float | None = None) -> ConsentChange | None:
        """Record the grants whose expiry has passed (the filter calls this when the view's deadline passes;
        ``tick`` calls it about once a second)."""
        if self.bench:
            return None
        if (self.clock() if now is None else now) < self._view.deadline:
            return None

        def make(state: ConsentState, at: float):
            moment = at if now is None else now
            view = build_view(state, self.config, False)
            ended = {name for name, grant in view.grants.items() if grant.expires_at <= moment}
            if not ended:
                return None
            grants = {k: v for k, v in state.grants.items() if k not in ended}
            return "expire", None, {"ended": sorted(ended)}, frozenset(ended), {"grants": grants}

        return self._commit(make, "clock")


__all__ = ["NETWORK", "OWNER", "ChangeCallback", "ConsentPolicy", "ConsentView", "build_view", "effective_grant"]
