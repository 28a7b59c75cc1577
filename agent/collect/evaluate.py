"""Checking and compiling parsed expressions against the DBC signals.

``compile_expression`` resolves every name to its signal(s), checks types
(numbers vs conditions; text only against value labels; durations only as
``change()``'s window) with errors pointing at the offending token, and turns
the syntax tree into nested closures that read a ``SignalHistory``.  No
eval/exec anywhere.

Evaluation never raises: a signal not seen yet, ``prev()`` before a second
sample, a ``change()`` window reaching back before the first sample, or a
division by zero is *unknown* (None).  ``or``/``and`` use three-valued logic
(``unknown or true`` is true, ``unknown and false`` is false) and a condition
holds only when its value is true or a non-zero number, never when unknown.
"""

from __future__ import annotations

import difflib
import operator
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from agent.collect.expr import (
    FUNCTIONS,
    Arith,
    Call,
    Compare,
    Duration,
    ExprError,
    Logic,
    Name,
    Negate,
    Node,
    Not,
    Number,
    Text,
    parse,
)
from agent.model import SignalSpec

Value = int | float | bool | None


class SignalIndex:
    """Finds signals by ``Message.Signal`` key or by VSS path.

    One VSS path may be fed by several DBC signals (e.g. the same speed on two
    buses); an expression naming it reads whichever delivered last.
    """

    def __init__(self, specs: Mapping[str, SignalSpec]) -> None:
        self.specs = specs
        self._by_vss: dict[str, list[SignalSpec]] = {}
        for spec in specs.values():
            self._by_vss.setdefault(spec.vss_path, []).append(spec)

    def resolve(self, name: str) -> tuple[SignalSpec, ...]:
        spec = self.specs.get(name)
        if spec is not None:
            return (spec,)
        specs = self._by_vss.get(name)
        if specs:
            return tuple(specs)
        close = difflib.get_close_matches(name, [*self.specs, *self._by_vss], n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise LookupError(f"unknown signal {name!r}{hint}")


class SignalHistory:
    """Latest, previous and recent physical values of the signals an expression reads.

    ``windows`` gives, per signal, the longest ``change()`` window; only those
    signals keep a short history, trimmed on each update to the newest sample
    at or before ``sample time - window`` plus everything after it.
    """

    __slots__ = ("_recent", "_windows", "current", "previous")

    def __init__(self, windows: Mapping[str, float]) -> None:
        self.current: dict[str, Value] = {}
        self.previous: dict[str, Value] = {}
        self._windows = dict(windows)
        self._recent: dict[str, deque[tuple[float, Value]]] = {key: deque() for key in windows}

    def update(self, key: str, timestamp: float, value: int | float) -> None:
        stored: Value = None if value != value else value  # NaN from a float signal is "unknown"
        current = self.current
        if key in current:
            self.previous[key] = current[key]
        current[key] = stored
        recent = self._recent.get(key)
        if recent is not None:
            recent.append((timestamp, stored))
            cutoff = timestamp - self._windows[key]
            while len(recent) > 1 and recent[1][0] <= cutoff:
                recent.popleft()

    def value_at(self, key: str, when: float) -> Value:
        """The value the signal had at ``when``: its newest sample at or before it."""
        found: Value = None
        for timestamp, value in self._recent.get(key, ()):
            if timestamp > when:
                break
            found = value
        return found

    def reset(self) -> None:
        self.current.clear()
        self.previous.clear()
        for recent in self._recent.values():
            recent.clear()


Evaluator = Callable[[SignalHistory, float], Value]


@dataclass(frozen=True)
class CompiledExpression:
    """A checked expression, ready to evaluate against a ``SignalHistory``.

    ``sources`` maps each name the expression reads (as written) to the DBC
    signals that feed it; ``windows`` the longest ``change()`` window per name.
    """

    text: str
    evaluate: Evaluator
    is_condition: bool
    sources: dict[str, tuple[SignalSpec, ...]] = field(default_factory=dict)
    windows: dict[str, float] = field(default_factory=dict)

    def new_history(self) -> SignalHistory:
        return SignalHistory(self.windows)

    def test(self, history: SignalHistory, now: float) -> bool:
        value = self.evaluate(history, now)
        return value is not None and value == value and bool(value)


_ARITH = {"+": operator.add, "-": operator.sub, "*": operator.mul}
_COMPARE = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
            ">=": operator.ge}
_KIND_NAMES = {"bool": "a condition", "number": "a number", "text": "text", "duration": "a duration"}
_ARITY = {"abs": (1, 1), "prev": (1, 1), "change": (2, 2), "min": (2, 99), "max": (2, 99)}


def _start(node: Node) -> int:
    """Offset of the first character of ``node`` (operators record their own position)."""
    while isinstance(node, (Arith, Compare, Logic)):
        node = node.operands[0] if isinstance(node, Logic) else node.left
    return node.pos


class _Compiler:
    def __init__(self, index: SignalIndex) -> None:
        self.index = index
        self.sources: dict[str, tuple[SignalSpec, ...]] = {}
        self.windows: dict[str, float] = {}

    # -- typed entry points ----------------------------------------------------------
    def number(self, node: Node, what: str) -> Evaluator:
        kind, evaluator = self.build(node)
        if kind != "number":
            raise ExprError(f"{what} needs a number, got {_KIND_NAMES[kind]}", _start(node))
        return evaluator

    def condition(self, node: Node, what: str) -> Evaluator:
        kind, evaluator = self.build(node)
        if kind not in ("bool", "number"):  # a number counts as a flag: non-zero is true
            raise ExprError(f"{what} needs a condition, got {_KIND_NAMES[kind]}", _start(node))
        return evaluator

    def signal(self, node: Node, what: str) -> str:
        if not isinstance(node, Name):
            raise ExprError(f"{what} needs a signal name", _start(node))
        try:
            self.sources[node.name] = self.index.resolve(node.name)
        except LookupError as exc:
            raise ExprError(str(exc.args[0]), node.pos) from None
        return node.name

    # -- nodes -------------------------------------------------------------------------
    def build(self, node: Node) -> tuple[str, Evaluator]:
        if isinstance(node, Number):
            value = node.value
            return "number", lambda history, now: value
        if isinstance(node, Name):
            key = self.signal(node, "a name")
            return "number", lambda history, now: history.current.get(key)
        if isinstance(node, Text):
            raise ExprError("text is only allowed in == or != against a signal with value labels", node.pos)
        if isinstance(node, Duration):
            raise ExprError("a duration such as 150ms is only allowed as change()'s window", node.pos)
        if isinstance(node, Negate):
            operand = self.number(node.operand, "'-'")
            return "number", lambda history, now: None if (v := operand(history, now)) is None else -v
        if isinstance(node, Not):
            inner = self.condition(node.operand, "'not'")
            return "bool", lambda history, now: None if (v := inner(history, now)) is None else not v
        if isinstance(node, Arith):
            return "number", self.arith(node)
        if isinstance(node, Compare):
            return "bool", self.compare(node)
        if isinstance(node, Logic):
            return "bool", self.logic(node)
        if isinstance(node, Call):
            return "number", self.call(node)
        raise TypeError(f"unknown node {node!r}")

    def arith(self, node: Arith) -> Evaluator:
        left = self.number(node.left, f"'{node.op}'")
        right = self.number(node.right, f"'{node.op}'")
        if node.op == "/":
            def divide(history: SignalHistory, now: float) -> Value:
                a = left(history, now)
                b = right(history, now)
                if a is None or b is None or b == 0:
                    return None
                return a / b
            return divide
        op = _ARITH[node.op]

        def apply(history: SignalHistory, now: float) -> Value:
            a = left(history, now)
            b = right(history, now)
            return None if a is None or b is None else op(a, b)
        return apply

    def compare(self, node: Compare) -> Evaluator:
        if isinstance(node.right, Text) or isinstance(node.left, Text):
            return self.compare_label(node)
        left = self.number(node.left, f"'{node.op}'")
        right = self.number(node.right, f"'{node.op}'")
        op = _COMPARE[node.op]

        def apply(history: SignalHistory, now: float) -> Value:
            a = left(history, now)
            if a is None:
                return None
            b = right(history, now)
            return None if b is None else op(a, b)
        return apply

    def compare_label(self, node: Compare) -> Evaluator:
        text, other = (node.right, node.left) if isinstance(node.right, Text) else (node.left, node.right)
        assert isinstance(text, Text)
        if node.op not in ("==", "!="):
            raise ExprError(f"text can only be compared with == or !=, not {node.op!r}", node.pos)
        read = other.args[0] if isinstance(other, Call) and other.func == "prev" and other.args else other
        if not isinstance(read, Name):
            raise ExprError("text can only be compared with a signal (or prev(signal)) that has value labels",
                            text.pos)
        inner = self.number(other, f"'{node.op}'")
        specs = self.sources[read.name]
        labels = sorted({label for spec in specs for label in spec.choices.values()})
        if not labels:
            raise ExprError(f"{read.name} has no value labels; compare it with a number", text.pos)
        # Labels become physical values at compile time; evaluation compares numbers only.
        values = frozenset(spec.to_physical(raw) for spec in specs for raw, label in spec.choices.items()
                           if label == text.value)
        if not values:
            raise ExprError(f"{read.name} has no value label {text.value!r} (labels: {', '.join(labels)})",
                            text.pos)
        wanted = node.op == "=="

        def apply(history: SignalHistory, now: float) -> Value:
            value = inner(history, now)
            return None if value is None else (value in values) == wanted
        return apply

    def logic(self, node: Logic) -> Evaluator:
        parts = tuple(self.condition(operand, f"'{node.op}'") for operand in node.operands)
        if node.op == "or":
            def any_true(history: SignalHistory, now: float) -> Value:
                unknown = False
                for part in parts:
                    value = part(history, now)
                    if value is None:
                        unknown = True
                    elif value:
                        return True
                return None if unknown else False
            return any_true

        def all_true(history: SignalHistory, now: float) -> Value:
            unknown = False
            for part in parts:
                value = part(history, now)
                if value is None:
                    unknown = True
                elif not value:
                    return False
            return None if unknown else True
        return all_true

    def call(self, node: Call) -> Evaluator:
        if node.func not in FUNCTIONS:
            close = difflib.get_close_matches(node.func, FUNCTIONS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ExprError(f"unknown function {node.func!r} ({hint}known: {', '.join(FUNCTIONS)})", node.pos)
        low, high = _ARITY[node.func]
        if not low <= len(node.args) <= high:
            wanted = str(low) if low == high else f"at least {low}"
            raise ExprError(f"{node.func}() takes {wanted} argument{'s' if high > 1 else ''}, got {len(node.args)}",
                            node.pos)
        if node.func == "abs":
            inner = self.number(node.args[0], "abs()")
            return lambda history, now: None if (v := inner(history, now)) is None else abs(v)
        if node.func in ("min", "max"):
            pick = min if node.func == "min" else max
            args = tuple(self.number(arg, f"{node.func}()") for arg in node.args)

            def extreme(history: SignalHistory, now: float) -> Value:
                values = [arg(history, now) for arg in args]
                return None if any(v is None for v in values) else pick(values)  # type: ignore[type-var]
            return extreme
        key = self.signal(node.args[0], f"{node.func}()")
        if node.func == "prev":
            return lambda history, now: history.previous.get(key)
        window_node = node.args[1]
        if not isinstance(window_node, Duration):
            raise ExprError("change() needs a window with a time unit, e.g. 150ms or 2s", _start(window_node))
        window = window_node.seconds
        if window <= 0:
            raise ExprError("change() needs a window longer than zero", window_node.pos)
        self.windows[key] = max(window, self.windows.get(key, 0.0))

        def change(history: SignalHistory, now: float) -> Value:
            current = history.current.get(key)
            if current is None:
                return None
            old = history.value_at(key, now - window)
            return None if old is None else current - old
        return change


def compile_expression(text: str, index: SignalIndex) -> CompiledExpression:
    """Parse, check and compile; ``ExprError`` (with the offset in ``text``) on any problem."""
    node = parse(text)
    compiler = _Compiler(index)
    kind, evaluator = compiler.build(node)
    if kind not in ("bool", "number"):
        raise ExprError(f"the expression must be a condition, got {_KIND_NAMES[kind]}", _start(node))
    return CompiledExpression(text, evaluator, kind == "bool", compiler.sources, compiler.windows)
