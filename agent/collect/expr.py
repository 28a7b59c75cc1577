"""A small, safe expression language for trigger conditions.

    change(Vehicle.Speed, 150ms) <= -8 or AEB.Active == 1 or Gear == "P"

This module turns text into a syntax tree: a tokenizer (every token keeps
its offset, so errors can point at a column) and a recursive-descent parser
producing small dataclasses.  ``agent.collect.evaluate`` checks names and types
against the DBC signals and compiles the tree into closures; nothing is ever
handed to eval/exec.

Grammar, lowest precedence first:
    expr       := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | comparison
    comparison := sum [("==" | "!=" | "<" | "<=" | ">" | ">=") sum]
    sum        := product (("+" | "-") product)*
    product    := unary (("*" | "/") unary)*
    unary      := "-" unary | primary
    primary    := NUMBER | DURATION | "text" | NAME | NAME "(" args ")" | "(" expr ")"

Names are signal names: a VSS path or ``Message.Signal``.  Functions:
``abs(x)``, ``min(a, b, ...)``, ``max(a, b, ...)``, ``prev(sig)`` (the value
before the latest sample) and ``change(sig, window)`` (latest value minus the
value the signal had ``window`` ago; the window needs a unit: ms, s, min, h).
``sig == "Label"`` compares against the DBC value labels of the signal.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from agent.yamlsrc import ConfigError

MAX_LENGTH = 4000
MAX_DEPTH = 60  # parentheses / operators nested deeper than this are refused (no RecursionError)
# unit -> (multiplier, divisor): "150ms" is 150 / 1000, correctly rounded, not 150 * 0.001
UNITS = {"ms": (1, 1000), "s": (1, 1), "min": (60, 1), "h": (3600, 1)}
KEYWORDS = ("and", "or", "not")
FUNCTIONS = ("abs", "change", "max", "min", "prev")


class ExprError(ConfigError):
    """A bad expression.  ``position`` is the 0-based offset in the expression text;
    callers that know where the expression sits in a file re-raise with ``located``.

    A problem may mention a second place (``related``, e.g. an unclosed '('):
    its text holds ``{column}``, filled with the file column when located.
    """

    def __init__(self, problem: str, position: int, prefix: str | None = None, related: int | None = None,
                 column_of: Callable[[int], int] | None = None) -> None:
        self.template = problem
        self.position = position
        self.related = related
        if related is not None:
            problem = problem.replace("{column}", str((column_of or _expression_column)(related)))
        self.problem = problem
        text = f"{prefix}: {problem}" if prefix else f"column {position + 1} of the expression: {problem}"
        super().__init__(text)

    def located(self, prefix: str, column_of: Callable[[int], int] | None = None) -> ExprError:
        return ExprError(self.template, self.position, prefix, self.related, column_of)


def _expression_column(position: int) -> int:
    return position + 1


# -- tokens ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # number | duration | name | text | op | end
    text: str
    pos: int
    value: float | int | str | None = None


_TOKEN_RE = re.compile(
    r"""(?P<space>\s+)
    |(?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?P<unit>[A-Za-z_]\w*)?
    |(?P<name>[A-Za-z_]\w*(?:\.\w+)*)
    |(?P<text>"[^"]*"|'[^']*')
    |(?P<op>==|!=|<=|>=|[<>+\-*/(),])""",
    re.VERBOSE,
)
_HINTS = {"=": "use == to compare", "&": "use 'and'", "|": "use 'or'", "!": "use 'not', or != to compare",
          '"': "text is not closed", "'": "text is not closed"}


def tokenize(text: str) -> list[Token]:
    if len(text) > MAX_LENGTH:
        raise ExprError(f"expression longer than {MAX_LENGTH} characters", 0)
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if match is None:
            char = text[pos]
            hint = _HINTS.get(char)
            raise ExprError(f"unexpected character {char!r}" + (f" ({hint})" if hint else ""), pos)
        kind = match.lastgroup
        if kind == "unit":  # lastgroup names the innermost group that matched last
            kind = "number"
        token_text = match.group(0)
        if kind == "number":
            literal, unit = match.group("number"), match.group("unit")
            value = _number(literal)
            if unit is None:
                tokens.append(Token("number", token_text, pos, value))
            elif unit in UNITS:
                multiplier, divisor = UNITS[unit]
                tokens.append(Token("duration", token_text, pos, value * multiplier / divisor))
            else:
                raise ExprError(f"unknown unit {unit!r} (known: {', '.join(UNITS)})", pos + len(literal))
        elif kind == "name":
            tokens.append(Token("op" if token_text in KEYWORDS else "name", token_text, pos))
        elif kind == "text":
            tokens.append(Token("text", token_text, pos, token_text[1:-1]))
        elif kind == "op":
            tokens.append(Token("op", token_text, pos))
        pos = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


def _number(literal: str) -> int | float:
    if literal[:2] in ("0x", "0X"):
        return int(literal, 16)
    if literal.isdigit():
        return int(literal)
    return float(literal)


# -- syntax tree ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Number:
    value: int | float
    pos: int


@dataclass(frozen=True, slots=True)
class Duration:
    seconds: float
    pos: int


@dataclass(frozen=True, slots=True)
class Text:
    value: str
    pos: int


@dataclass(frozen=True, slots=True)
class Name:
    name: str
    pos: int


@dataclass(frozen=True, slots=True)
class Call:
    func: str
    args: tuple[Node, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class Negate:
    operand: Node
    pos: int


@dataclass(frozen=True, slots=True)
class Not:
    operand: Node
    pos: int


@dataclass(frozen=True, slots=True)
class Arith:
    op: str
    left: Node
    right: Node
    pos: int


@dataclass(frozen=True, slots=True)
class Compare:
    op: str
    left: Node
    right: Node
    pos: int


@dataclass(frozen=True, slots=True)
class Logic:
    op: str  # and | or
    operands: tuple[Node, ...]
    pos: int


Node = Number | Duration | Text | Name | Call | Negate | Not | Arith | Compare | Logic
COMPARISONS = ("==", "!=", "<", "<=", ">", ">=")


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.index = 0
        self.depth = 0

    @property
    def token(self) -> Token:
        return self.tokens[self.index]

    def take(self) -> Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def at(self, *texts: str) -> bool:
        return self.token.kind == "op" and self.token.text in texts

    def nest(self, pos: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExprError(f"expression nested deeper than {MAX_DEPTH} levels", pos)

    def expr(self) -> Node:
        self.nest(self.token.pos)
        operands = [self.and_expr()]
        pos = operands[0].pos
        while self.at("or"):
            self.take()
            operands.append(self.and_expr())
        self.depth -= 1
        return operands[0] if len(operands) == 1 else Logic("or", tuple(operands), pos)

    def and_expr(self) -> Node:
        operands = [self.not_expr()]
        while self.at("and"):
            self.take()
            operands.append(self.not_expr())
        return operands[0] if len(operands) == 1 else Logic("and", tuple(operands), operands[0].pos)

    def not_expr(self) -> Node:
        if self.at("not"):
            token = self.take()
            self.nest(token.pos)
            operand = self.not_expr()
            self.depth -= 1
            return Not(operand, token.pos)
        return self.comparison()

    def comparison(self) -> Node:
        left = self.sum()
        if not self.at(*COMPARISONS):
            return left
        token = self.take()
        right = self.sum()
        if self.at(*COMPARISONS):
            raise ExprError("comparisons cannot be chained; join them with 'and'", self.token.pos)
        return Compare(token.text, left, right, token.pos)

    def sum(self) -> Node:
        node = self.product()
        while self.at("+", "-"):
            token = self.take()
            node = Arith(token.text, node, self.product(), token.pos)
        return node

    def product(self) -> Node:
        node = self.unary()
        while self.at("*", "/"):
            token = self.take()
            node = Arith(token.text, node, self.unary(), token.pos)
        return node

    def unary(self) -> Node:
        if self.at("-"):
            token = self.take()
            self.nest(token.pos)
            operand = self.unary()
            self.depth -= 1
            if isinstance(operand, Number):  # fold "-8" into a literal
                return Number(-operand.value, token.pos)
            return Negate(operand, token.pos)
        return self.primary()

    def primary(self) -> Node:
        token = self.take()
        if token.kind == "number":
            return Number(token.value, token.pos)  # type: ignore[arg-type]
        if token.kind == "duration":
            return Duration(float(token.value), token.pos)  # type: ignore[arg-type]
        if token.kind == "text":
            return Text(str(token.value), token.pos)
        if token.kind == "name":
            if self.at("("):
                return self.call(token)
            return Name(token.text, token.pos)
        if token.kind == "op" and token.text == "(":
            inner = self.expr()
            self.close(token)
            return inner
        got = "the end" if token.kind == "end" else repr(token.text)
        raise ExprError(f"expected a value, got {got}", token.pos)

    def call(self, name: Token) -> Node:
        opening = self.take()
        args: list[Node] = []
        if not self.at(")"):
            args.append(self.expr())
            while self.at(","):
                self.take()
                args.append(self.expr())
        self.close(opening)
        return Call(name.text, tuple(args), name.pos)

    def close(self, opening: Token) -> None:
        if not self.at(")"):
            got = "the end" if self.token.kind == "end" else repr(self.token.text)
            raise ExprError(f"expected ')' to close the '(' at column {{column}}, got {got}", self.token.pos,
                            related=opening.pos)
        self.take()


def parse(text: str) -> Node:
    """Parse expression text into a syntax tree (``ExprError`` with the offset on bad input)."""
    tokens = tokenize(text)
    if tokens[0].kind == "end":
        raise ExprError("empty expression", 0)
    parser = _Parser(tokens)
    node = parser.expr()
    if parser.token.kind != "end":
        raise ExprError(f"unexpected {parser.token.text!r} after a complete expression", parser.token.pos)
    return node
