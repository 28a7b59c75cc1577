"""Build typed dataclasses from located YAML data, rejecting what does not fit.

Unknown keys, wrong types and bad choices are errors that name file, line and
key path.  Field defaults come from the dataclasses themselves, so the example
config documents them and this module enforces them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from agent.yamlsrc import Located

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (list, dict):
        return f"{origin.__name__}"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, doc: Located, path: tuple) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, doc, path)
            except ValueError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        names = " or ".join(_type_name(o) for o in options if o is not type(None))
        raise doc.error(path, f"expected {names}, got {type(value).__name__} {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise doc.error(path, f"must be one of {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        (item_type,) = get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise doc.error(path, f"expected a list, got {type(value).__name__} {value!r}")
        return [_convert(item_type, item, doc, (*path, i)) for i, item in enumerate(value)]
    if origin is dict:
        _key_type, value_type = get_args(tp) or (str, Any)
        if not isinstance(value, dict):
            raise doc.error(path, f"expected a mapping, got {type(value).__name__} {value!r}")
        return {str(k): _convert(value_type, v, doc, (*path, k)) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, doc, path, value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise doc.error(path, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise doc.error(path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise doc.error(path, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise doc.error(path, f"expected text, got {type(value).__name__}")
        return str(value)
    raise TypeError(f"schema: unsupported field type {tp!r}")


def build(cls: type[T], doc: Located, path: tuple = (), data: Any = dataclasses.MISSING) -> T:
    """Construct ``cls`` from ``data`` (default: the whole document)."""
    if data is dataclasses.MISSING:
        data = doc.data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise doc.error(path, f"expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [key for key in data if key not in fields]
    if unknown:
        known = ", ".join(sorted(fields))
        raise doc.error((*path, unknown[0]), f"unknown key (known keys: {known})")
    kwargs = {}
    for name, spec in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], doc, (*path, name))
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise doc.error(path, f"missing required key '{name}'")
    return cls(**kwargs)
