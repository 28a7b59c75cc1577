"""Loading DBC files with cantools, with errors and warnings a person can act on.

cantools does all the parsing.  This module only decides when to fall back to
``strict=False`` (real-world DBCs, e.g. opendbc's, often have overlapping
signals) and turns cantools' messages into ``file:line: problem`` form.

Limits (``docs/configuration.md``, "DBC files"), checked before cantools sees the
file: cantools needs about 4 KB of memory per signal, so a DBC past them could
take the agent over its service unit's ``MemoryMax=512M``.  The largest real DBC
we know (Model3CAN.dbc: 384 KB, 148 messages, 3,172 signals) is far below them.

* ``MAX_DBC_BYTES``: 4 MiB per file;
* ``MAX_DBC_MESSAGES``: 5,000 messages (``BO_``) per file;
* ``MAX_DBC_SIGNALS``: 50,000 signals (``SG_``) per file.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import cantools
from cantools.database import Database

log = logging.getLogger(__name__)

MAX_DBC_BYTES = 4 * 1024 * 1024
MAX_DBC_MESSAGES = 5_000
MAX_DBC_SIGNALS = 50_000

_LINE_RE = re.compile(r"line (\d+)")
_MESSAGE_RE = re.compile(rb"^[ \t]*BO_[ \t]", re.MULTILINE)
_SIGNAL_RE = re.compile(rb"^[ \t]*SG_[ \t]", re.MULTILINE)
_QUOTED_NAME_RE = re.compile(r"(?:signals?|message) ([A-Za-z_][A-Za-z0-9_]*)")


class DbcError(ValueError):
    """A DBC file that cantools cannot load; the message names file and line."""


@dataclass
class LoadedDbc:
    path: Path
    database: Database
    strict: bool
    sha256: str
    warnings: list[str] = field(default_factory=list)


class _CaptureCantoolsLog(logging.Handler):
    """Collects what cantools logs while loading (e.g. duplicate message names)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _line_of(text: str, error: str) -> int | None:
    """Best line number for a cantools error: its own, else where the named item is defined."""
    match = _LINE_RE.search(error)
    if match:
        return int(match.group(1))
    for name in _QUOTED_NAME_RE.findall(error):
        for number, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if (stripped.startswith("BO_ ") or stripped.startswith("SG_ ")) and re.search(
                rf"\b{re.escape(name)}\b", stripped
            ):
                return number
    match = re.search(r"VAL_ (\d+) (\w+)", error)
    if match:
        needle = f"VAL_ {match.group(1)} {match.group(2)}"
        for number, line in enumerate(text.splitlines(), start=1):
            if needle in line:
                return number
    return None


def _first_line(error: str) -> str:
    lines = [part.strip() for part in error.strip().splitlines() if part.strip()]
    return " ".join(lines)[:300]


def _check_limits(path: Path, data: bytes) -> None:
    """Refuse a DBC past the documented limits, naming the limit (and the line where it was passed)."""
    if len(data) > MAX_DBC_BYTES:
        raise DbcError(f"{path}: DBC larger than the limit of {MAX_DBC_BYTES} bytes (4 MiB); refused unparsed")
    for pattern, limit, what in ((_MESSAGE_RE, MAX_DBC_MESSAGES, "messages (BO_)"),
                                 (_SIGNAL_RE, MAX_DBC_SIGNALS, "signals (SG_)")):
        for count, match in enumerate(pattern.finditer(data), start=1):
            if count > limit:
                line = data.count(b"\n", 0, match.start()) + 1
                raise DbcError(f"{path}:{line}: DBC has more than the limit of {limit} {what}; refused unparsed")


def load_dbc(path: str | Path) -> LoadedDbc:
    """Load one DBC; strict first, then non-strict with a warning naming the problem.

    A file past the limits (size, messages, signals) is refused before cantools parses it."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_DBC_BYTES + 1)  # never more than the limit in memory
    except OSError as exc:
        raise DbcError(f"{path}: cannot read DBC: {exc.strerror or exc}") from None
    _check_limits(path, data)
    text = data.decode("cp1252", errors="replace")
    digest = hashlib.sha256(data).hexdigest()
    capture = _CaptureCantoolsLog()
    cantools_log = logging.getLogger("cantools")
    cantools_log.addHandler(capture)
    try:
        try:
            database = cantools.database.load_string(text, database_format="dbc", strict=True)
            strict = True
            problems: list[str] = []
        except Exception as strict_error:  # cantools raises several types; all mean "cannot load strictly"
            try:
                database = cantools.database.load_string(text, database_format="dbc", strict=False)
            except Exception as error:
                message = _first_line(str(error))
                line = _line_of(text, str(error))
                where = f"{path}:{line}" if line else str(path)
                raise DbcError(f"{where}: cannot load DBC: {message}") from None
            strict = False
            message = _first_line(str(strict_error))
            line = _line_of(text, str(strict_error))
            where = f"{path}:{line}" if line else str(path)
            problems = [f"{where}: loaded with strict=False: {message}"]
    finally:
        cantools_log.removeHandler(capture)
    problems.extend(f"{path}: {note}" for note in capture.messages)
    for problem in problems:
        log.warning("%s", problem)
    return LoadedDbc(path=path, database=database, strict=strict, sha256=digest, warnings=problems)
