"""Build typed dataclasses from located YAML data, rejecting what does not fit.

Unknown keys, wrong types and bad choices are errors that name file, line and
key path.  Field defaults come from the dataclasses themselves, so the example
config documents them and this module enforces them.

This is also the one place where the configuration's numbers and strings are
read, so it is where their limits are enforced.  Each field declares its own,
next to its default:

    max_age_s: float = field(default=10.0, metadata=schema.num(0.01, 86_400))   # finite, 0.01 <= x <= 86400
    id: str = field(default="demo-vehicle", metadata=schema.text(schema.ID))    # 1-64 of A-Z a-z 0-9 - _ .
    dbc: list[str] = field(default_factory=list, metadata=schema.text(schema.PATH))  # each item

A number field without a declared range is a programming error (``TypeError``);
a string field without a declared kind is a ``NAME`` (at most 128 characters).
Values inside ``Any`` (e.g. python-can ``options``) must be finite numbers within
``ANY_RANGE`` and strings of at most ``ANY_TEXT`` characters.  A field marked
``deferred`` is kept as plain data here and built later by the class it names.
``leaves`` lists every field with its limit: ``docs/configuration.md`` is
checked against it.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from agent.yamlsrc import Located

T = TypeVar("T")
NAME_MAX = 255  # bytes of one path component (Linux)
_LIMIT = "limit"


@dataclass(frozen=True)
class Text:
    """A string's limit: length in characters, optionally a character set (a regex character class)."""

    max_len: int
    charset: str | None = None  # e.g. "A-Za-z0-9_.-"
    min_len: int = 0
    multiline: bool = False  # tab, CR and LF allowed (other control characters never are)
    path: bool = False  # a file path: no component longer than NAME_MAX (255 bytes)
    what: str = ""  # the charset in words, for errors and the docs
    message: str = ""  # instead of the generic problem when the characters (or emptiness) are wrong

    def problem(self, value: str) -> str | None:
        if len(value) > self.max_len:
            return f"must be at most {self.max_len} characters, got {len(value)} ({show(value, 24, size=False)})"
        if len(value) < self.min_len:
            return self._own(value) or ("must not be empty" if self.min_len == 1 else
                                        f"must be at least {self.min_len} characters")
        allowed = "\t\r\n" if self.multiline else ""
        bad = next((c for c in value if (ord(c) < 32 and c not in allowed) or 0x7F <= ord(c) < 0xA0), None)
        if bad is not None:
            return self._own(value) or f"must not contain control characters, got {show(value)}"
        if self.charset and not re.fullmatch(f"[{self.charset}]*", value):
            return self._own(value) or f"may contain only {self.what or self.charset}, got {show(value)}"
        if self.path and any(len(part.encode()) > NAME_MAX for part in value.split("/")):
            return f"has a path component longer than {NAME_MAX} bytes (NAME_MAX), got {show(value)}"
        return None

    def _own(self, value: str) -> str | None:
        return f"{self.message}, got {show(value)}" if self.message else None

    def describe(self) -> str:
        size = f"{self.min_len}-{self.max_len}" if self.min_len else f"at most {self.max_len}"
        chars = f" of {self.what or self.charset}" if self.charset else ""
        chars += f", each path component at most {NAME_MAX} bytes" if self.path else ""
        return f"text, {size} characters{chars}"


@dataclass(frozen=True)
class Range:
    """A number's limit: finite, ``lo <= x <= hi`` (``lo < x`` when ``above``; integers also whole)."""

    lo: float
    hi: float
    above: bool = False  # lo itself excluded ("more than zero")

    def problem(self, value: float, integer: bool) -> str | None:
        finite = not isinstance(value, float) or math.isfinite(value)  # isfinite(10**400) would overflow
        if finite and (self.lo < value if self.above else self.lo <= value) and value <= self.hi:
            return None
        kind = "an integer" if integer else "a finite number"
        return f"must be {kind} between {self._lo()} and {_num(self.hi)}, got {show(value)}"

    def _lo(self) -> str:
        return f"{_num(self.lo)} (excluded)" if self.above else _num(self.lo)

    def describe(self, integer: bool) -> str:
        return f"{'integer' if integer else 'number'} {self._lo()} to {_num(self.hi)}"


SAFE_CHARS = "A-Za-z0-9_.-"
SAFE_WHAT = "letters, digits, -, _ and ."
# Ids that go into MQTT topics, client ids and batch headers.
ID = Text(64, SAFE_CHARS, min_len=1, what=SAFE_WHAT)
NAME = Text(128)  # names, hosts, interfaces: the default of every string field
HOST = Text(253, "A-Za-z0-9_.:%\\[\\]-", min_len=1, what="letters, digits, -, _, ., :, %, [ and ]")
PATH = Text(4096, path=True)  # file and directory paths (PATH_MAX, NAME_MAX)
FREE = Text(4096, multiline=True)  # free text: rule expressions, globs, descriptions
ANY_TEXT = FREE
ANY_RANGE = Range(-(2.0**53), 2.0**53)


@dataclass(frozen=True)
class Limit:
    num: Range | None = None
    text: Text | None = None
    deferred: str | type | None = None  # built later by this class ("module:Class" or the class)
    internal: bool = False  # not from YAML


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e16 else repr(value)


def show(value: Any, width: int = 40, size: bool = True) -> str:
    """A value for an error message: its repr, cut short (a config value may be 70,000 characters)."""
    try:
        text = repr(value)
    except ValueError:  # an integer of more than 4300 digits
        text = f"<a number of about {value.bit_length() * 0.30103:.0f} digits>"
    if len(text) <= width:
        return text
    count = f" ({len(value)} characters)" if size and isinstance(value, str) else ""
    return f"{text[:width]}...{count}"


def num(lo: float, hi: float, *, above: bool = False, text: Text | None = None) -> dict[str, Limit]:
    """Field metadata: its numbers (also inside lists and mappings) are finite and within ``[lo, hi]``
    (``(lo, hi]`` with ``above``); ``text`` limits its strings, for a field that may be either."""
    return {_LIMIT: Limit(num=Range(lo, hi, above), text=text)}


def text(kind: Text = NAME) -> dict[str, Limit]:
    """Field metadata: its strings (also inside lists and mappings) fit ``kind``."""
    return {_LIMIT: Limit(text=kind)}


def deferred(cls: str | type) -> dict[str, Limit]:
    """Field metadata: plain data here (only its shape is checked); the section parser builds it
    later with ``cls`` (``"module:Class"`` or the class), which documents its keys."""
    return {_LIMIT: Limit(deferred=cls)}


# Field metadata: never from YAML (set by the loader); an unknown key there, and not documented.
INTERNAL = {_LIMIT: Limit(internal=True)}


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (list, dict):
        return f"{origin.__name__}"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _check_any(value: Any, doc: Located, path: tuple) -> Any:
    """Finite numbers and bounded strings anywhere in free-form data."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_any(item, doc, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_any(item, doc, (*path, index))
    elif isinstance(value, str):
        problem = ANY_TEXT.problem(value)
        if problem:
            raise doc.error(path, problem)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        problem = ANY_RANGE.problem(value, isinstance(value, int))
        if problem:
            raise doc.error(path, problem)
    return value


def _number(tp: type, value: Any, doc: Located, path: tuple, limit: Limit) -> Any:
    integer = tp is int
    if isinstance(value, bool) or not isinstance(value, (int, float) if not integer else int):
        raise doc.error(path, f"expected {'an integer' if integer else 'a number'}, got {show(value)}")
    if limit.num is None:
        raise TypeError(f"schema: {'.'.join(map(str, path))} is a number without a declared range (schema.num)")
    problem = limit.num.problem(value, integer)  # before float(): a 400-digit integer does not fit one
    if problem:
        raise doc.error(path, problem)
    return value if integer else float(value)


def _shape_of(tp_or_value: Any) -> str:
    """"mapping", "list", "any" or "scalar", of a type or of a value."""
    if isinstance(tp_or_value, dict) or get_origin(tp_or_value) is dict or dataclasses.is_dataclass(tp_or_value):
        return "mapping"
    if isinstance(tp_or_value, list) or get_origin(tp_or_value) is list:
        return "list"
    return "any" if tp_or_value is Any else "scalar"


def _deferred(tp: Any, value: Any, doc: Located, path: tuple) -> Any:
    """A deferred field: only its shape (list, mapping) is checked here."""
    if value is None and type(None) in get_args(tp):
        return None
    shape = _shape_of(tp)
    if shape in ("list", "mapping") and _shape_of(value) != shape:
        raise doc.error(path, f"expected a {shape}, got {type(value).__name__} {show(value)}")
    return value


def _convert(tp: Any, value: Any, doc: Located, path: tuple, limit: Limit = Limit()) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        options = tuple(o for o in options if o is not type(None))
        fitting = [o for o in options if _shape_of(o) == _shape_of(value) or _shape_of(o) == "any"]
        exact = [o for o in fitting if isinstance(o, type) and type(value) is o]
        if len(fitting) == 1 or len(exact) == 1:  # one option fits this value: its own error is the precise one
            return _convert((exact or fitting)[0], value, doc, path, limit)
        errors = []
        for option in options:
            try:
                return _convert(option, value, doc, path, limit)
            except ValueError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        names = " or ".join(_type_name(o) for o in options)
        raise doc.error(path, f"expected {names}, got {type(value).__name__} {show(value)}")
    if origin is Literal:
        if value not in get_args(tp):
            raise doc.error(path, f"must be one of {_type_name(tp)}, got {show(value)}")
        return value
    if origin is list:
        (item_type,) = get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise doc.error(path, f"expected a list, got {type(value).__name__} {show(value)}")
        return [_convert(item_type, item, doc, (*path, i), limit) for i, item in enumerate(value)]
    if origin is dict:
        _key_type, value_type = get_args(tp) or (str, Any)
        if not isinstance(value, dict):
            raise doc.error(path, f"expected a mapping, got {type(value).__name__} {show(value)}")
        return {str(k): _convert(value_type, v, doc, (*path, k), limit) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, doc, path, value)
    if tp is Any:
        return _check_any(value, doc, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise doc.error(path, f"expected true or false, got {show(value)}")
        return value
    if tp in (int, float):
        return _number(tp, value, doc, path, limit)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise doc.error(path, f"expected text, got {type(value).__name__}")
        result = str(value)
        problem = (limit.text or NAME).problem(result)
        if problem:
            raise doc.error(path, problem)
        return result
    raise TypeError(f"schema: unsupported field type {tp!r}")


def _limit(spec: dataclasses.Field) -> Limit:
    return spec.metadata.get(_LIMIT, Limit())


def build(cls: type[T], doc: Located, path: tuple = (), data: Any = dataclasses.MISSING) -> T:
    """Construct ``cls`` from ``data`` (default: the whole document)."""
    if data is dataclasses.MISSING:
        data = doc.data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise doc.error(path, f"expected a mapping, got {type(data).__name__} {show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and not _limit(f).internal}
    unknown = [key for key in data if key not in fields]
    if unknown:
        known = ", ".join(sorted(fields))
        raise doc.error((*path, unknown[0]), f"unknown key (known keys: {known})")
    kwargs = {}
    for name, spec in fields.items():
        if name in data:
            limit = _limit(spec)
            if limit.deferred is not None:
                kwargs[name] = _deferred(hints[name], data[name], doc, (*path, name))
            else:
                kwargs[name] = _convert(hints[name], data[name], doc, (*path, name), limit)
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise doc.error(path, f"missing required key '{name}'")
    return cls(**kwargs)


# -- the documentation of the limits ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Leaf:
    """One configuration key that holds a value (``buses[].bitrate``, ``buffer.ttl_s.<key>``) and its limit."""

    key: str
    types: tuple[Any, ...]  # what it may be: int, float, str, bool, Any, a Literal, type(None)
    limit: Limit
    required: bool = False

    def describe(self) -> str:
        parts = []
        for tp in self.types:
            if tp is type(None):
                continue
            if get_origin(tp) is Literal:
                parts.append("one of " + ", ".join(str(a) for a in get_args(tp)))
            elif tp is bool:
                parts.append("true or false")
            elif tp in (int, float):
                if self.limit.num is None:
                    raise TypeError(f"schema: {self.key} is a number without a declared range (schema.num)")
                parts.append(self.limit.num.describe(tp is int))
            elif tp is str:
                parts.append((self.limit.text or NAME).describe())
            elif tp is Any:
                parts.append(f"anything; numbers finite, at most 2^53 in magnitude; text at most "
                             f"{ANY_TEXT.max_len} characters")
            else:
                raise TypeError(f"schema: unsupported field type {tp!r}")
        if type(None) in self.types:
            parts.append("null")
        return ("required; " if self.required else "") + ", or ".join(parts)


def _resolve(cls: str | type) -> type:
    if isinstance(cls, str):
        module, _, name = cls.partition(":")
        return getattr(importlib.import_module(module), name)
    return cls


def _leaves_of(tp: Any, limit: Limit, key: str, required: bool) -> Iterator[Leaf]:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        nested = [o for o in options if dataclasses.is_dataclass(o) or get_origin(o) in (list, dict)]
        if nested:  # e.g. ``tls: TlsConfig | None``: the keys inside
            for option in nested:
                yield from _leaves_of(option, limit, key, required)
            return
        yield Leaf(key, options, limit, required)
    elif origin is list:
        (item_type,) = get_args(tp) or (Any,)
        yield from _leaves_of(item_type, limit, f"{key}[]", False)
    elif origin is dict:
        _key_type, value_type = get_args(tp) or (str, Any)
        yield from _leaves_of(value_type, limit, f"{key}.<key>", False)
    elif dataclasses.is_dataclass(tp):
        yield from leaves(tp, key)
    else:
        yield Leaf(key, (tp,), limit, required)


def leaves(cls: type, prefix: str = "") -> Iterator[Leaf]:
    """Every key of ``cls`` (nested and deferred ones too) with its limit, in declaration order."""
    hints = typing.get_type_hints(cls)
    for spec in dataclasses.fields(cls):
        limit = _limit(spec)
        if not spec.init or limit.internal:
            continue
        key = f"{prefix}.{spec.name}" if prefix else spec.name
        required = spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
        if limit.deferred is not None:
            target = _resolve(limit.deferred)
            yield from leaves(target, f"{key}[]" if get_origin(hints[spec.name]) is list else key)
        else:
            yield from _leaves_of(hints[spec.name], limit, key, required)


def markdown_table(cls: type) -> str:
    rows = ["| key | allowed values |", "|---|---|"]
    rows += [f"| `{leaf.key}` | {leaf.describe().replace('|', '&#124;')} |" for leaf in leaves(cls)]
    return "\n".join(rows)
