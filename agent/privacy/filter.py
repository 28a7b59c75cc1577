"""The privacy stage: only granted, transformed data reaches the upload buffer.

Sits between collect and batch (``RowSink`` in, ``RowSink`` out).  Per row:

* each signal's category comes from the catalog (``SignalSpec.category``); a
  signal without a spec is ``unclassified`` and is dropped (fail closed);
  latitude/longitude (found by VSS path) always count as ``location``;
* signals of categories not granted right now are dropped;
* ``location``: only latitude and longitude leave, each coarsened to the
  granted level (``agent.privacy.transforms``); every other location signal
  (altitude, heading, accuracy, geofence flags, GNSS time) is dropped; inside
  a privacy zone - or while no position is known yet and zones exist - no
  location signal leaves at all;
* ``identity`` values are replaced by keyed pseudonyms;
* a row with a transform becomes physical (``raw=False``); ``categories`` is
  set to what is left; an empty row is not forwarded.

Decisions are precomputed per message and rebuilt only when the consent
version changes, so the per-row cost is a dict lookup and, when nothing is
dropped, no copy at all.  Bench mode (``grant_all``) passes every category at
full precision but still pseudonymises identity.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agent.model import UNCLASSIFIED, Row, RowSink, SignalSpec
from agent.privacy.consent import ConsentChange
from agent.privacy.decision import (
    DROP,
    LATITUDE,
    LATITUDE_VSS,
    LONGITUDE,
    LONGITUDE_VSS,
    PSEUDONYM,
    category_of,
    location_suppressed,
    position_coarseners,
    signal_action,
    unknown_signal_action,
)
from agent.privacy.policy import ConsentPolicy, ConsentView
from agent.privacy.pseudonym import Pseudonymizer

log = logging.getLogger(__name__)

VersionCallback = Callable[[list[ConsentChange]], None]
_NEVER = math.inf


@dataclass(frozen=True, slots=True)
class _Plan:
    """What to do with each signal of one message under one consent view."""

    actions: dict[str, tuple[int, str, SignalSpec | None]]  # name -> (action, category, spec)
    categories: frozenset[str]  # categories of the signals kept when nothing is suppressed
    keep_all: bool  # every signal passes unchanged: forward the row as it is
    physical: bool  # some transform applies: the output row carries physical values
    has_location: bool  # location signals are kept: the zone check applies
    latitude: str | None  # names of the position signals in this message (kept or not)
    longitude: str | None
    # keep_all and no privacy zone applies under the plan's view: a row of known signals is forwarded as it is
    # (a plan lives as long as its view: plans are rebuilt when the view changes)
    as_is: bool = False
    tracks_position: bool = False  # latitude or longitude is in this message


@dataclass
class FilterCounters:
    rows_in: int = 0
    rows_forwarded: int = 0
    rows_dropped: int = 0  # nothing left after filtering
    signals_dropped: int = 0
    zone_suppressed_rows: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class PrivacyFilter:
    """``put(row)`` -> ``sink.put(filtered row)``, per the consent in force."""

    def __init__(self, policy: ConsentPolicy, specs: Mapping[str, SignalSpec], sink: RowSink,
                 pseudonymizer: Pseudonymizer | None = None, clock: Callable[[], float] | None = None,
                 on_version_change: VersionCallback | None = None) -> None:
        self.policy = policy
        self.specs = specs
        self.sink = sink
        self.pseudonymizer = pseudonymizer
        self.clock = clock or policy.clock
        # Runs on the pipeline thread before the first row filtered under a new
        # consent version: the place to flush (or drop) open batches so that each
        # batch carries exactly one consent version.
        self.on_version_change = on_version_change
        self.counters = FilterCounters()
        self._by_message: dict[str, list[SignalSpec]] = {}
        for spec in specs.values():
            self._by_message.setdefault(spec.message, []).append(spec)
        self._plans: dict[str, _Plan] = {}
        self._latitude = math.nan  # last raw position seen (never leaves the filter)
        self._longitude = math.nan
        self._warned_no_pseudonymizer = False
        self._view: ConsentView = policy.view
        self._switch(policy.view, notify=False)

    @property
    def consent_version(self) -> int:
        """The consent version the rows forwarded since the last version change were filtered under."""
        return self._view.version

    @property
    def bench(self) -> bool:
        return self._view.bench

    # -- hot path ----------------------------------------------------------------------
    def put(self, row: Row) -> None:
        self.counters.rows_in += 1
        view = self.policy.view
        if view.deadline != _NEVER:
            now = self.clock()
            if now >= view.deadline:
                view = self._expire(now)
        if view is not self._view:
            self._switch(view)
        plan = self._plans.get(row.message)
        if plan is None:
            plan = self._plans[row.message] = self._plan(row.message, view)
        if plan.tracks_position:
            self._track_position(row, plan)
        if plan.as_is and row.values.keys() <= plan.actions.keys():
            row.categories = plan.categories
            self.counters.rows_forwarded += 1
            self.sink.put(row)
            return
        self._put_transformed(row, plan, view)

    def _put_transformed(self, row: Row, plan: _Plan, view: ConsentView) -> None:
        suppress_location = plan.has_location and bool(view.zones) and self._in_zone(view)
        if suppress_location:
            self.counters.zone_suppressed_rows += 1
        values: dict[str, int | float] = {}
        categories: set[str] = set()
        physical, from_raw = plan.physical, row.raw
        actions = plan.actions
        for name, value in row.values.items():
            action, category, spec = actions.get(name) or self._unplanned(plan, name)
            if action == DROP or (suppress_location and category == "location"):
                continue
            if physical and from_raw:
                if spec is None:
                    continue  # cannot make an unknown signal physical
                value = spec.to_physical(value)
            if action == LATITUDE:
                value = self._coarsen_latitude(value)
            elif action == LONGITUDE:
                value = self._coarsen_longitude(value)
            elif action == PSEUDONYM:
                assert self.pseudonymizer is not None and spec is not None
                value = self.pseudonymizer.value_pseudonym(spec.key, value)
            values[name] = value
            categories.add(category)
        self.counters.signals_dropped += len(row.values) - len(values)
        if not values:
            self.counters.rows_dropped += 1
            return
        self.counters.rows_forwarded += 1
        self.sink.put(Row(row.stream, row.priority, row.timestamp, row.bus, row.message, values,
                          from_raw and not physical, frozenset(categories)))

    def _expire(self, now: float) -> ConsentView:
        try:
            self.policy.expire_due(now)
        except OSError as exc:  # the state file could not be written: stop sending the expired data anyway
            log.error("could not record a consent expiry (%s); expired categories are dropped", exc)
        view = self.policy.view
        if now >= view.deadline:
            self._plans.clear()  # plans are rebuilt against ``now``: expired grants count as not granted
        return view

    # -- positions and zones ----------------------------------------------------------------
    def _track_position(self, row: Row, plan: _Plan) -> None:
        for name, is_latitude in ((plan.latitude, True), (plan.longitude, False)):
            if name is None or name not in row.values:
                continue
            spec = plan.actions[name][2]
            value = row.values[name]
            if row.raw and spec is not None:
                value = spec.to_physical(value)
            if is_latitude:
                self._latitude = float(value)
            else:
                self._longitude = float(value)

    def _in_zone(self, view: ConsentView) -> bool:
        return location_suppressed(view, self._latitude, self._longitude)

    # -- plans --------------------------------------------------------------------------
    def _switch(self, view: ConsentView, notify: bool = True) -> None:
        previous = self._view.version
        self._view = view
        self._plans.clear()
        # Bench mode keeps location at full precision (``signal_action`` then never asks for a transform).
        self._coarsen_latitude, self._coarsen_longitude = position_coarseners(view) or (_identity, _identity)
        if notify and self.on_version_change is not None and view.version != previous:
            self.on_version_change(self.policy.changes_since(previous))

    def _plan(self, message: str, view: ConsentView) -> _Plan:
        now = self.clock()
        actions: dict[str, tuple[int, str, SignalSpec | None]] = {}
        latitude = longitude = None
        for spec in self._by_message.get(message, ()):
            name = spec.signal
            category = category_of(spec)
            if spec.vss_path == LATITUDE_VSS:
                latitude = name
            elif spec.vss_path == LONGITUDE_VSS:
                longitude = name
            actions[name] = (self._action(spec, category, view, now), category, spec)
        kept = [(a, c) for a, c, _ in actions.values() if a != DROP]
        physical = any(a in (LATITUDE, LONGITUDE, PSEUDONYM) for a, _ in kept)
        keep_all = bool(actions) and len(kept) == len(actions) and not physical
        has_location = any(c == "location" for _, c in kept)
        return _Plan(actions, frozenset(c for _, c in kept), keep_all, physical, has_location, latitude, longitude,
                     as_is=keep_all and not (has_location and view.zones),
                     tracks_position=latitude is not None or longitude is not None)

    def _action(self, spec: SignalSpec, category: str, view: ConsentView, now: float) -> int:
        action = signal_action(view, spec, now, can_pseudonymize=self.pseudonymizer is not None)
        if action == DROP and category == "identity" and self.pseudonymizer is None and \
                view.is_granted(category, now) and not self._warned_no_pseudonymizer:
            log.warning("identity is granted but no pseudonym key is loaded: identity signals are dropped")
            self._warned_no_pseudonymizer = True
        return action

    def _unplanned(self, plan: _Plan, name: str) -> tuple[int, str, SignalSpec | None]:
        # A signal the specs do not know: unclassified (dropped unless bench mode).
        entry = (unknown_signal_action(self._view) if not plan.physical else DROP, UNCLASSIFIED, None)
        plan.actions[name] = entry
        return entry


def _identity(value: float) -> float:
    return value


__all__ = ["LATITUDE_VSS", "LONGITUDE_VSS", "FilterCounters", "PrivacyFilter", "category_of"]
