"""The ``incidents:`` section of the agent configuration.

Example (defaults shown; the triggers are examples)::

    incidents:
      pre_s: 20                 # seconds kept before the trigger
      post_s: 5                 # seconds captured after it
      categories: [driving, vehicle_health, location, incident]
      keep: 20                  # at least this many snapshots are always kept
      max_mb: 512               # local quota; only snapshots beyond `keep` are ever removed for it
      dir: incidents            # relative to the state directory
      late_s: 10                # how late a trigger may arrive and still get its full pre window
      camera_triggers: [collision]
      triggers:
        - name: speed_drop
          when: "change(Vehicle.Speed, 150ms) <= -8"
        - name: hard_decel
          when: "Vehicle.Acceleration.Longitudinal <= -7"
          min_interval_s: 30

Trigger expressions use the collection rule language (``agent.collect``);
their names are checked against the DBC signals when the recorder is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from agent import schema
from agent.camera.events import TRIGGERS as CAMERA_TRIGGERS
from agent.collect.expr import ExprError, parse
from agent.collect.rules import ExprLocation, Trigger
from agent.model import ALL_CATEGORIES
from agent.yamlsrc import Located, format_path

SECTION = ("incidents",)
DEFAULT_CATEGORIES = ("driving", "vehicle_health", "location", "incident")
TRIGGER_NAME = schema.Text(48, "A-Za-z0-9_-", min_len=1, what="letters, digits, - and _",
                           message="trigger names are 1-48 letters, digits, - or _")


@dataclass(frozen=True)
class IncidentTrigger:
    name: str
    trigger: Trigger  # the expression with its file:line, compiled against the DBC by the recorder


@dataclass(frozen=True)
class IncidentConfig:
    pre_s: float = 20.0
    post_s: float = 5.0
    categories: tuple[str, ...] = DEFAULT_CATEGORIES
    keep: int = 20
    max_mb: float = 512.0
    dir: str = "incidents"
    late_s: float = 10.0
    # A frame this much past a window's end closes it: frames of several buses
    # arrive slightly out of order, and the window must not miss the late ones.
    settle_s: float = 0.5
    camera_triggers: tuple[str, ...] = ("collision",)
    triggers: tuple[IncidentTrigger, ...] = ()


@dataclass
class _Trigger:
    name: str = field(metadata=schema.text(TRIGGER_NAME))
    when: str = field(metadata=schema.text(schema.FREE))
    mode: Literal["rising_edge", "level"] = "rising_edge"
    min_interval_s: float = field(default=0.0, metadata=schema.num(0, 86_400))


# The YAML shape of the section; its limits are the documented ones (pre_s + post_s <= 600 is checked below).
@dataclass
class _Incidents:
    pre_s: float = field(default=20.0, metadata=schema.num(0, 600))
    post_s: float = field(default=5.0, metadata=schema.num(0, 600))
    categories: list[str] = field(default_factory=lambda: list(DEFAULT_CATEGORIES), metadata=schema.text(schema.ID))
    keep: int = field(default=20, metadata=schema.num(1, 100_000))
    max_mb: float = field(default=512.0, metadata=schema.num(0.001, 1_048_576))
    dir: str = field(default="incidents", metadata=schema.text(schema.PATH))
    late_s: float = field(default=10.0, metadata=schema.num(0, 3600))
    settle_s: float = field(default=0.5, metadata=schema.num(0, 60))
    camera_triggers: list[str] = field(default_factory=lambda: ["collision"], metadata=schema.text(schema.ID))
    triggers: list[_Trigger] = field(default_factory=list)


def parse_incidents(doc: Located | None, data: Any, path: tuple = SECTION) -> IncidentConfig:
    """Typed ``incidents:`` section; errors read ``file:line: incidents.key: problem``."""
    if doc is None:
        doc = Located("<defaults>", {}, {(): 1})
    raw = schema.build(_Incidents, doc, path, data or {})  # numbers: checked by their declared ranges
    if raw.pre_s + raw.post_s <= 0:
        raise doc.error((*path, "post_s"), "the window pre_s + post_s must be longer than zero")
    if raw.pre_s + raw.post_s > 600:
        raise doc.error((*path, "pre_s"), "a snapshot window longer than 10 minutes is a recording, not a snapshot")
    for index, category in enumerate(raw.categories):
        if category not in ALL_CATEGORIES:
            raise doc.error((*path, "categories", index),
                            f"unknown category {category!r} (known: {', '.join(ALL_CATEGORIES)})")
    for index, trigger in enumerate(raw.camera_triggers):
        if trigger not in CAMERA_TRIGGERS:
            raise doc.error((*path, "camera_triggers", index),
                            f"unknown camera trigger {trigger!r} (known: {', '.join(CAMERA_TRIGGERS)})")
    triggers: list[IncidentTrigger] = []
    names: set[str] = set()
    for index, item in enumerate(raw.triggers):
        where = (*path, "triggers", index)
        if item.name in names:
            raise doc.error((*where, "name"), f"duplicate trigger name {item.name!r}")
        names.add(item.name)
        triggers.append(IncidentTrigger(item.name, _expression(doc, (*where, "when"), item)))
    return IncidentConfig(raw.pre_s, raw.post_s, tuple(dict.fromkeys(raw.categories)), raw.keep, raw.max_mb,
                          raw.dir, raw.late_s, raw.settle_s, tuple(raw.camera_triggers), tuple(triggers))


def _expression(doc: Located, path: tuple, item: _Trigger) -> Trigger:
    location = ExprLocation(doc.source, format_path(path), doc.line(path))
    try:
        parse(item.when)
    except ExprError as exc:
        raise exc.located(location.prefix(exc.position)) from None
    return Trigger(item.when, item.mode, item.min_interval_s, location=location)


def incident_config(agent_config: Any) -> IncidentConfig:
    """The incidents section of an ``AgentConfig`` (defaults when absent)."""
    return parse_incidents(agent_config.document, agent_config.incidents, SECTION)


__all__ = ["DEFAULT_CATEGORIES", "IncidentConfig", "IncidentTrigger", "incident_config", "parse_incidents"]
