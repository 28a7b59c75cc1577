"""The state directory: buffer, consent state, ledger, keys and control socket live here.

``prepare_state_dir`` runs once at start-up, before anything opens a file in it:
it creates the directory 0700, refuses one that others could tamper with
(world-writable, owned by another user, not a directory), tightens group/other
bits on the directory, and repairs key files to 0600.  Refusing is for what may
already have been tampered with; repairing is for permissions that are merely
too loose (e.g. after a copy or a restore from backup).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

# Secrets the agent keeps in the state dir (pseudonym.key, vehicle-signing-key.pem) and any a fleet adds.
KEY_PATTERNS = ("*.key", "*.pem")


class StateDirError(ValueError):
    """The state directory cannot be used safely; the message says why and how to fix it."""


@dataclass
class StateDirReport:
    path: Path
    created: bool = False
    repairs: list[str] = field(default_factory=list)  # one line per permission fixed, for the log


def prepare_state_dir(path: str | Path, euid: int | None = None) -> StateDirReport:
    """Create or check ``path`` (0700) and its key files (0600); StateDirError if it is unsafe."""
    path = Path(path)
    euid = os.geteuid() if euid is None else euid
    report = StateDirReport(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        _create(path)
        report.created = True
        info = path.stat()
    except OSError as exc:
        raise StateDirError(f"state dir {path}: cannot access: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise StateDirError(f"state dir {path}: exists but is not a directory")
    mode = stat.S_IMODE(info.st_mode)
    if mode & stat.S_IWOTH:
        raise StateDirError(f"state dir {path} is world-writable (mode {mode:04o}): anyone could have replaced "
                            f"the buffer or keys; check its contents, then chmod 700 {path}")
    if info.st_uid != euid:
        raise StateDirError(f"state dir {path} belongs to uid {info.st_uid}, but the agent runs as uid {euid}; "
                            f"chown it to the agent's user")
    if mode & 0o077:
        _chmod(path, 0o700)
        report.repairs.append(f"{path}: mode {mode:04o} -> 0700")
    _check_keys(path, euid, report)
    return report


def _create(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass  # created meanwhile (another agent command): checked below like any existing directory
    except OSError as exc:
        raise StateDirError(f"state dir {path}: cannot create: {exc.strerror or exc}") from None
    else:
        _chmod(path, 0o700)  # mkdir's mode is filtered by the umask: make it exact


def _check_keys(directory: Path, euid: int, report: StateDirReport) -> None:
    try:
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except OSError as exc:
        raise StateDirError(f"state dir {directory}: cannot list: {exc.strerror or exc}") from None
    for entry in entries:
        if not any(fnmatchcase(entry.name, pattern) for pattern in KEY_PATTERNS):
            continue
        key = Path(entry.path)
        info = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(info.st_mode):
            raise StateDirError(f"{key}: key file is a symbolic link; keep the key itself in the state dir")
        if not stat.S_ISREG(info.st_mode):
            continue  # not a file (a directory called x.pem): nothing secret to protect here
        if info.st_uid != euid:
            raise StateDirError(f"{key}: key file belongs to uid {info.st_uid}, but the agent runs as uid {euid}")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o177:
            _chmod(key, 0o600)
            report.repairs.append(f"{key}: mode {mode:04o} -> 0600")


def _chmod(path: Path, mode: int) -> None:
    try:
        os.chmod(path, mode)
    except OSError as exc:
        raise StateDirError(f"{path}: cannot set mode {mode:04o}: {exc.strerror or exc}") from None
