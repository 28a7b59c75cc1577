"""YAML documents that remember where each value came from.

Every configuration error must name the file, the line and the key path
(``agent.yaml:14: buses[1].dbc[0]: no such file dbc/x.dbc``).  PyYAML's composer
already knows each node's line; this module keeps that knowledge next to the
plain Python data so validators can point at the right line.

A configuration file is small, so everything past a small budget is refused
before it can cost memory or time (``docs/configuration.md``, "YAML"):

* the file: at most ``MAX_FILE_BYTES`` (1 MiB);
* nodes (every scalar, list and mapping, counting each one an alias repeats):
  at most ``MAX_NODES`` (10,000); this is what stops a "billion laughs" bomb;
* alias expansions (every ``*name`` followed, also inside other aliases):
  at most ``MAX_ALIASES`` (100);
* nesting: at most ``MAX_DEPTH`` (50) levels, also through aliases;
* mapping keys: at most ``MAX_KEY_CHARS`` (128) characters.

An alias to a node that contains it (``a: &a [*a]``) is refused as a recursive
alias.  Every refusal is a ``ConfigError`` naming the file, the line and the alias.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError

MAX_FILE_BYTES = 1024 * 1024
MAX_NODES = 10_000
MAX_ALIASES = 100
MAX_DEPTH = 50
MAX_KEY_CHARS = 128


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


class _Alias:
    """An alias as written (``*name`` and its place), pointing at the anchored node."""

    def __init__(self, anchor: str, target: yaml.Node, mark: yaml.Mark) -> None:
        self.anchor, self.target, self.start_mark = anchor, target, mark


class _Loader(yaml.SafeLoader):
    """SafeLoader's composer, keeping aliases as ``_Alias`` and refusing deep or huge documents early."""

    def __init__(self, text: str, source: str) -> None:
        super().__init__(text)
        self.source = source
        self.depth = 0
        self.nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.get_event()
            if event.anchor not in self.anchors:
                raise ComposerError(None, None, f"found undefined alias {event.anchor!r}", event.start_mark)
            return _Alias(event.anchor, self.anchors[event.anchor], event.start_mark)
        line = self.peek_event().start_mark.line + 1
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise ConfigError(f"{self.source}:{line}: more than {MAX_NODES} YAML nodes "
                              "(the limit of a configuration document)")
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise ConfigError(f"{self.source}:{line}: nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _Builder:
    """Turns the node graph into plain data, following aliases within the budget."""

    def __init__(self, source: str, lines: dict) -> None:
        self.source, self.lines = source, lines
        self.nodes = 0
        self.aliases = 0
        self.open: set[int] = set()  # ids of the collections being built (an alias to one is recursive)
        self.outer: tuple[_Alias, tuple] | None = None  # the alias as written in the document, and its path

    def fail(self, mark: yaml.Mark, path: tuple, problem: str) -> ConfigError:
        where = f"{format_path(path)}: " if path else ""
        return ConfigError(f"{self.source}:{mark.line + 1}: {where}{problem}")

    def alias(self, alias: _Alias, path: tuple, depth: int) -> Any:
        self.aliases += 1
        outer, outer_path = self.outer or (alias, path)
        if id(alias.target) in self.open:
            raise self.fail(alias.start_mark, path, f"alias *{alias.anchor} refers to a node that contains it "
                                                    f"(&{alias.anchor}, line {alias.target.start_mark.line + 1}): "
                                                    "recursive aliases are refused")
        if self.aliases > MAX_ALIASES:
            raise self.fail(outer.start_mark, outer_path, f"alias *{outer.anchor}: more than {MAX_ALIASES} alias "
                                                          "expansions in one document (refused as an alias bomb)")
        saved = self.outer
        self.outer = (outer, outer_path)
        try:
            value = self.build(alias.target, path, depth)
        finally:
            self.outer = saved
        self.lines[path] = alias.start_mark.line + 1
        return value

    def build(self, node: Any, path: tuple, depth: int) -> Any:
        if isinstance(node, _Alias):
            return self.alias(node, path, depth)
        self.nodes += 1
        if self.nodes > MAX_NODES:
            if self.outer:
                alias, alias_path = self.outer
                raise self.fail(alias.start_mark, alias_path, f"alias *{alias.anchor} expands past {MAX_NODES} "
                                                              "nodes (the limit of a configuration document)")
            raise self.fail(node.start_mark, path, f"more than {MAX_NODES} YAML nodes")
        if depth > MAX_DEPTH:
            raise self.fail(node.start_mark, path, f"nested deeper than {MAX_DEPTH} levels")
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            self.open.add(id(node))
            try:
                if isinstance(node, yaml.SequenceNode):
                    return [self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
                return self.mapping(node, path, depth)
            finally:
                self.open.discard(id(node))
        return self.scalar(node, path)

    def mapping(self, node: yaml.MappingNode, path: tuple, depth: int) -> dict:
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                mark = key_node.start_mark
                raise ConfigError(f"{self.source}:{mark.line + 1}: mapping keys must be plain names")
            key = key_node.value
            if len(key) > MAX_KEY_CHARS:
                raise self.fail(key_node.start_mark, path, f"a mapping key longer than {MAX_KEY_CHARS} characters "
                                                           f"({len(key)}: {key[:20]!r}...)")
            if key in result:
                raise self.fail(key_node.start_mark, (*path, key), "duplicate key")
            self.lines[(*path, key)] = key_node.start_mark.line + 1
            result[key] = self.build(value_node, (*path, key), depth + 1)
        return result

    def scalar(self, node: yaml.Node, path: tuple) -> Any:
        loader = yaml.SafeLoader("")
        try:
            return loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:  # e.g. a tag SafeLoader refuses ("=", "!!python/object")
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise self.fail(node.start_mark, path, f"invalid YAML value: {problem}") from None
        except (ValueError, OverflowError) as exc:  # e.g. an integer of more than 4300 digits, a bad timestamp
            raise self.fail(node.start_mark, path, f"invalid YAML value: {str(exc)[:120]}") from None
        finally:
            loader.dispose()


def load_text(text: str, source: str) -> Located:
    """Parse YAML text; syntax errors and budget overruns name the source and line."""
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError(f"{source}: {len(text)} characters, more than a configuration file may have "
                          f"({MAX_FILE_BYTES} bytes)")
    loader = None
    try:
        loader = _Loader(text, source)  # the reader checks the characters here
        node = loader.get_single_node()
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        character = exc.character if isinstance(exc.character, str) else chr(exc.character)
        raise ConfigError(f"{source}:{line}: invalid YAML: unacceptable character "
                          f"#x{ord(character):04x}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{source}{line}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None
    finally:
        if loader is not None:
            loader.dispose()
    lines: dict[tuple[str | int, ...], int] = {}
    if node is None:
        return Located(source, None, {(): 1})
    data = _Builder(source, lines).build(node, (), 1)
    return Located(source, data, lines)


def load_file(path: str | Path) -> Located:
    path = Path(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_FILE_BYTES} bytes, the limit of a configuration file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return load_text(text, str(path))
