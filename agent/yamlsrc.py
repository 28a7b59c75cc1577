"""YAML documents that remember where each value came from.

Every configuration error must name the file, the line and the key path
(``agent.yaml:14: buses[1].dbc[0]: no such file dbc/x.dbc``).  PyYAML's composer
already knows each node's line; this module keeps that knowledge next to the
plain Python data so validators can point at the right line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem, already formatted as ``file:line: path: problem``."""


def format_path(parts: tuple[str | int, ...]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass
class Located:
    """Plain YAML data plus the line of every key path in it."""

    source: str
    data: Any
    lines: dict[tuple[str | int, ...], int] = field(default_factory=dict)

    def line(self, path: tuple[str | int, ...]) -> int | None:
        # Fall back to the closest enclosing node that has a line.
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())

    def where(self, path: tuple[str | int, ...]) -> str:
        line = self.line(path)
        location = f"{self.source}:{line}" if line else self.source
        return f"{location}: {format_path(path)}" if path else location

    def error(self, path: tuple[str | int, ...], problem: str) -> ConfigError:
        return ConfigError(f"{self.where(path)}: {problem}")

    def sub(self, path: tuple[str | int, ...]) -> Located:
        """A view of one subtree, keeping file and lines (paths stay absolute)."""
        data = self.data
        for part in path:
            data = data[part]
        return Located(self.source, data, self.lines)


def _construct(node: yaml.Node, path: tuple, lines: dict, source: str) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError(f"{source}:{key_node.start_mark.line + 1}: mapping keys must be plain names")
            key = key_node.value
            if key in result:
                raise ConfigError(
                    f"{source}:{key_node.start_mark.line + 1}: {format_path((*path, key))}: duplicate key"
                )
            lines[(*path, key)] = key_node.start_mark.line + 1
            result[key] = _construct(value_node, (*path, key), lines, source)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*path, index), lines, source) for index, item in enumerate(node.value)]
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError as exc:  # e.g. a tag SafeLoader refuses ("=", "!!python/object")
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f"{format_path(path)}: " if path else ""
        raise ConfigError(f"{source}:{node.start_mark.line + 1}: {where}invalid YAML value: {problem}") from None
    finally:
        loader.dispose()


def load_text(text: str, source: str) -> Located:
    """Parse YAML text; syntax errors name the source and line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{source}{line}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None
    lines: dict[tuple[str | int, ...], int] = {}
    if node is None:
        return Located(source, None, {(): 1})
    data = _construct(node, (), lines, source)
    return Located(source, data, lines)


def load_file(path: str | Path) -> Located:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return load_text(text, str(path))
