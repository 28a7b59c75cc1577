"""The ``collection:`` section of the config: campaigns of signal rules and condition triggers.

``parse_collection`` validates the section and returns a ``CollectionPlan``
(plain frozen dataclasses).  Every problem names file, line and key path;
expression problems also name the column (``agent.yaml:31:24: ...``).
Signal names inside expressions are checked when the plan meets the DBC
signals (``Trigger.compile``, called by the ``Collector``), with the same
file:line:column.  ``config/collection.example.yaml`` documents every key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

from agent import schema
from agent.collect.evaluate import CompiledExpression, SignalIndex, compile_expression
from agent.collect.expr import Arith, Call, Compare, ExprError, Logic, Name, Negate, Node, Not, parse
from agent.config import AgentConfig
from agent.model import DATA_ROLE, SignalSpec
from agent.yamlsrc import ConfigError, Located, format_path

DEFAULT_STREAM = "telemetry"
DROP = "drop"
SECTION = ("collection",)


# -- the plan ------------------------------------------------------------------------


@dataclass(frozen=True)
class SignalRule:
    """How one campaign samples the signals whose VSS path or ``Message.Signal`` matches ``match``.

    No period, no on_change and no max_rate: every frame (full rate).
    """

    match: str
    period_ms: float | None = None
    aggregate: str = "last"  # last | min | max | mean (with period_ms)
    on_change: bool = False
    deadband_abs: float = 0.0
    deadband_rel: float | None = None
    max_rate_hz: float | None = None
    where: str = ""
    # Transport signals (checksums, rolling counters: agent.model.TRANSPORT_ROLES) are checked in the car and
    # left out of uploads: a rule takes them only when it says so.
    transport: bool = False

    def matches(self, spec: SignalSpec) -> bool:
        if spec.role != DATA_ROLE and not self.transport:
            return False
        # fnmatch's "*" also crosses dots: "Vehicle.*" takes the whole Vehicle tree.
        return fnmatchcase(spec.vss_path, self.match) or fnmatchcase(spec.key, self.match)


@dataclass(frozen=True)
class ExprLocation:
    """Where an expression sits in its file, to turn an offset into ``file:line:column``.

    ``chunks`` are (offset in the expression, line, column) of each source line's
    piece of the expression; empty when the text could not be found, in which
    case errors name the line of the key and the column within the expression.
    """

    source: str
    key_path: str
    line: int | None
    chunks: tuple[tuple[int, int, int], ...] = ()

    def _place(self, position: int) -> tuple[int, int] | None:
        for offset, line, column in reversed(self.chunks):
            if offset <= position:
                return line, column + position - offset
        return None

    def column(self, position: int) -> int:
        """The file column of an offset (the expression column when the text was not found)."""
        place = self._place(position)
        return place[1] if place else position + 1

    def prefix(self, position: int) -> str:
        place = self._place(position)
        if place:
            return f"{self.source}:{place[0]}:{place[1]}: {self.key_path}"
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.key_path}: expression column {position + 1}"

    def error(self, error: ExprError) -> ExprError:
        return error.located(self.prefix(error.position), self.column)


@dataclass(frozen=True)
class Trigger:
    when: str
    mode: str = "rising_edge"  # rising_edge | level
    min_interval_s: float = 0.0
    pre_s: float = 0.0
    post_s: float = 0.0
    location: ExprLocation = field(default_factory=lambda: ExprLocation("<expression>", "when", None))
    names: frozenset[str] = frozenset()  # signal names the expression reads, as written

    def compile(self, index: SignalIndex) -> CompiledExpression:
        """Resolve names against the DBC signals; errors carry file:line:column."""
        try:
            return compile_expression(self.when, index)
        except ExprError as exc:
            raise self.location.error(exc) from None


@dataclass(frozen=True)
class Campaign:
    name: str
    stream: str = DEFAULT_STREAM
    priority: int = 0
    rules: tuple[SignalRule, ...] = ()
    trigger: Trigger | None = None
    where: str = ""


@dataclass(frozen=True)
class CollectionPlan:
    """What to collect.  The default plan takes every signal at full rate into "telemetry"."""

    campaigns: tuple[Campaign, ...] = ()
    # Where signals that no campaign names go (full rate); None drops them.
    default_stream: str | None = DEFAULT_STREAM
    default_priority: int = 0
    # A timestamp this much older than the newest seen is a logger clock reset.
    clock_reset_s: float = 1.0

    def default_takes(self, spec: SignalSpec) -> bool:
        """Does the default stream take this signal when no rule does?  Only measurements: transport
        signals leave only through a rule with ``transport: true``."""
        return self.default_stream is not None and spec.role == DATA_ROLE

    def wants(self, spec: SignalSpec) -> bool:
        """Does any part of the plan read this signal?  (A decode filter: skip the rest.)"""
        if self.default_takes(spec):
            return True
        for campaign in self.campaigns:
            if any(rule.matches(spec) for rule in campaign.rules):
                return True
            if campaign.trigger and (spec.key in campaign.trigger.names or spec.vss_path in campaign.trigger.names):
                return True
        return False


# -- YAML shapes (schema.build rejects unknown keys and wrong types) -----------------------


# Limits: numbers are finite and within these ranges, strings within these lengths (docs/configuration.md).
PRIORITY = schema.num(-1000, 1000)
STREAM = schema.Text(64, "A-Za-z0-9_-", min_len=1, what="letters, digits, - and _",
                     message="stream names are 1-64 letters, digits, - or _")
CAMPAIGN = schema.Text(64, "A-Za-z0-9_.-", min_len=1, what="letters, digits, ., - and _",
                       message="campaign names are 1-64 letters, digits, ., - or _")


@dataclass
class _OnChange:
    abs: float | None = field(default=None, metadata=schema.num(0, 1e15))
    rel: float | None = field(default=None, metadata=schema.num(0, 1e6))


@dataclass
class _SignalRule:
    match: str = field(metadata=schema.text(schema.Text(256)))
    period_ms: float | None = field(default=None, metadata=schema.num(0, 86_400_000, above=True))
    aggregate: Literal["last", "min", "max", "mean"] | None = None
    # true, or {abs: x} / {rel: x}; checked by hand for precise errors, then built as _OnChange.
    on_change: Any = field(default=None, metadata=schema.deferred(_OnChange))
    max_rate_hz: float | None = field(default=None, metadata=schema.num(0, 1_000_000, above=True))
    transport: bool = False  # also take checksums and rolling counters (left out by default)


@dataclass
class _Trigger:
    when: str = field(metadata=schema.text(schema.FREE))
    mode: Literal["rising_edge", "level"] = "rising_edge"
    min_interval_s: float = field(default=0.0, metadata=schema.num(0, 86_400))
    pre_s: float = field(default=0.0, metadata=schema.num(0, 600))
    post_s: float = field(default=0.0, metadata=schema.num(0, 600))


@dataclass
class _Campaign:
    name: str = field(metadata=schema.text(CAMPAIGN))
    stream: str = field(default=DEFAULT_STREAM, metadata=schema.text(STREAM))
    priority: int = field(default=0, metadata=PRIORITY)
    enabled: bool = True
    # Each a glob (a bare string) or a rule mapping, built by _rule.
    signals: list[Any] = field(default_factory=list, metadata=schema.deferred(_SignalRule))
    trigger: _Trigger | None = None


@dataclass
class _Collection:
    default_stream: str | None = field(default=None, metadata=schema.text(STREAM))  # or "drop"
    default_priority: int = field(default=0, metadata=PRIORITY)
    clock_reset_s: float = field(default=1.0, metadata=schema.num(0, 86_400, above=True))
    campaigns: list[_Campaign] = field(default_factory=list)


# -- parsing -----------------------------------------------------------------------------


def parse_collection(config: AgentConfig | Located, source_text: str | None = None) -> CollectionPlan:
    """The plan of a loaded config (or of a located document holding a ``collection`` section).

    ``source_text`` is the file's text, used to find expression columns; by
    default the file named by the document's source is read again.
    """
    if isinstance(config, AgentConfig):
        if config.document is None:
            doc = Located(config.source, {"collection": config.collection} if config.collection else {})
        else:
            doc = config.document
    else:
        doc = config
    data = doc.data.get("collection") if isinstance(doc.data, dict) else None
    if not data:
        return CollectionPlan()
    if not isinstance(data, dict):
        raise doc.error(SECTION, f"expected a mapping, got {type(data).__name__}")
    raw = schema.build(_Collection, doc, SECTION, data)
    lines = _source_lines(doc, source_text)
    campaigns: list[Campaign] = []
    names: set[str] = set()
    for index, item in enumerate(raw.campaigns):
        path = (*SECTION, "campaigns", index)
        if not isinstance(data["campaigns"][index].get("name"), str):
            # YAML reads on/off/yes/no/1.0 as booleans and numbers; a name must be written as text.
            raise doc.error((*path, "name"), f"campaign names are text; quote {item.name!r}")
        campaign = _campaign(doc, path, item, lines)
        if campaign.name in names:
            raise doc.error((*path, "name"), f"duplicate campaign name {campaign.name!r}")
        names.add(campaign.name)
        if item.enabled:
            campaigns.append(campaign)
    if "default_stream" in data:  # its characters: checked by its declaration (STREAM)
        default = raw.default_stream
        default_stream = None if default in (None, DROP) else default
    else:
        default_stream = None if raw.campaigns else DEFAULT_STREAM
    return CollectionPlan(tuple(campaigns), default_stream, raw.default_priority, raw.clock_reset_s)


def _source_lines(doc: Located, source_text: str | None) -> list[str]:
    if source_text is None:
        try:
            source_text = Path(doc.source).read_text(encoding="utf-8")
        except (OSError, ValueError):
            return []
    return source_text.splitlines()


def _campaign(doc: Located, path: tuple, item: _Campaign, lines: list[str]) -> Campaign:
    trigger = _trigger(doc, (*path, "trigger"), item.trigger, lines) if item.trigger else None
    if not item.signals and trigger is None:
        raise doc.error((*path, "signals"), "a campaign without a trigger needs at least one signal rule")
    rules = tuple(_rule(doc, (*path, "signals", i), entry, triggered=trigger is not None)
                  for i, entry in enumerate(item.signals))
    return Campaign(item.name, item.stream, item.priority, rules, trigger, doc.where(path))


def _rule(doc: Located, path: tuple, entry: Any, triggered: bool) -> SignalRule:
    if isinstance(entry, str):
        entry = {"match": entry}
    raw = schema.build(_SignalRule, doc, path, entry)
    if not raw.match.strip():
        raise doc.error((*path, "match"), "must name a signal, VSS path or glob")
    sampled = [key for key in ("period_ms", "aggregate", "on_change", "max_rate_hz") if getattr(raw, key)]
    if triggered and sampled:
        raise doc.error((*path, sampled[0]),
                        "a trigger campaign records its signals at full rate around each trigger; "
                        "sample them in a separate campaign")
    if raw.aggregate and raw.period_ms is None:
        raise doc.error((*path, "aggregate"), "aggregate needs period_ms")
    if raw.period_ms is not None and raw.on_change:
        raise doc.error((*path, "on_change"), "on_change and period_ms exclude each other")
    if raw.period_ms is not None and raw.max_rate_hz is not None:
        raise doc.error((*path, "max_rate_hz"), "max_rate_hz has no meaning with period_ms (one row per period)")
    on_change, deadband_abs, deadband_rel = _on_change(doc, (*path, "on_change"), raw.on_change)
    return SignalRule(raw.match, raw.period_ms, raw.aggregate or "last", on_change, deadband_abs, deadband_rel,
                      raw.max_rate_hz, doc.where(path), raw.transport)


def _on_change(doc: Located, path: tuple, value: Any) -> tuple[bool, float, float | None]:
    if value is None or value is False:
        return False, 0.0, None
    if value is True:
        return True, 0.0, None
    if not isinstance(value, dict):
        raise doc.error(path, f"expected true or a mapping {{abs: x}} / {{rel: x}}, got {value!r}")
    raw = schema.build(_OnChange, doc, path, value)
    if raw.abs is not None and raw.rel is not None:
        raise doc.error(path, "give an absolute (abs) or a relative (rel) deadband, not both")
    return True, raw.abs or 0.0, raw.rel


def _trigger(doc: Located, path: tuple, raw: _Trigger, lines: list[str]) -> Trigger:
    when_path = (*path, "when")
    line = doc.line(when_path)
    location = ExprLocation(doc.source, format_path(when_path), line, _chunks(raw.when, lines, line))
    try:
        node = parse(raw.when)
    except ExprError as exc:
        raise location.error(exc) from None
    return Trigger(raw.when, raw.mode, raw.min_interval_s, raw.pre_s, raw.post_s, location,
                   frozenset(_names_in(node)))


def _names_in(node: Node) -> set[str]:
    if isinstance(node, Name):
        return {node.name}
    if isinstance(node, Call):
        return set().union(*(_names_in(arg) for arg in node.args))
    if isinstance(node, (Negate, Not)):
        return _names_in(node.operand)
    if isinstance(node, (Arith, Compare)):
        return _names_in(node.left) | _names_in(node.right)
    if isinstance(node, Logic):
        return set().union(*(_names_in(operand) for operand in node.operands))
    return set()


def _chunks(expr: str, lines: list[str], first: int | None) -> tuple[tuple[int, int, int], ...]:
    """Find the expression in the file: on the key's line, or folded over the following lines."""
    if not lines or first is None or not 1 <= first <= len(lines):
        return ()
    column = lines[first - 1].find(expr)
    if column >= 0:
        return ((0, first, column + 1),)
    chunks: list[tuple[int, int, int]] = []
    cursor = 0
    end = len(expr.rstrip())
    for number in range(first, min(len(lines), first + 200) + 1):
        while cursor < end and expr[cursor].isspace():
            cursor += 1
        if cursor >= end:
            break
        line = lines[number - 1]
        text = line.strip()
        candidates = [text, text.rstrip("\"'").rstrip()]
        if number == first and ":" in text:
            value = text.split(":", 1)[1].strip().lstrip("\"'")
            candidates += [value, value.rstrip("\"'").rstrip()]
        for candidate in candidates:
            if candidate and expr.startswith(candidate, cursor):
                start = line.find(candidate, line.find(":") + 1 if number == first else 0)
                chunks.append((cursor, number, start + 1))
                cursor += len(candidate)
                break
    return tuple(chunks) if cursor >= end else ()


__all__ = ["DEFAULT_STREAM", "Campaign", "CollectionPlan", "ConfigError", "ExprLocation", "SignalRule", "Trigger",
           "parse_collection"]
