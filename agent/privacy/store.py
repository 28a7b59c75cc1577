"""Durable, versioned consent state: one JSON line per change, fsync'd before it counts.

Each line is ``{"version", "change", "state"}``: the change that was made and
the complete state after it, so the newest good line *is* the current state
and the file is also the history of every change.  Versions increase by
exactly one per line.

A torn or unreadable last line (power cut while writing) is handled fail
closed: the state read from such a file has no grants, and the next writer
cuts the damaged bytes and records a ``recover`` change that revokes every
grant, so the owner has to opt in again rather than the car guessing.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from agent.privacy.consent import ConsentChange, ConsentState
from agent.privacy.durable import append_synced, ensure_private_dir, file_lock, truncate_synced

log = logging.getLogger(__name__)

STATE_FILE = "consent.jsonl"


@dataclass(frozen=True)
class _Read:
    records: list[tuple[ConsentChange, ConsentState]]
    good_end: int  # byte offset just after the last good line
    problem: str | None  # set when the file's tail cannot be trusted


def _encode(change: ConsentChange, state: ConsentState) -> bytes:
    record = {"version": state.version, "change": change.to_json(), "state": state.to_json()}
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n"


class ConsentStore:
    """The consent state file (``<state dir>/consent.jsonl``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.problem: str | None = None

    @classmethod
    def in_dir(cls, state_dir: str | Path) -> ConsentStore:
        return cls(Path(state_dir) / STATE_FILE)

    def _read(self) -> _Read:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return _Read([], 0, None)
        records: list[tuple[ConsentChange, ConsentState]] = []
        offset, good_end, problem = 0, 0, None
        lines = data.split(b"\n")
        for number, line in enumerate(lines, 1):
            end = offset + len(line) + 1
            last = number == len(lines)
            if last and not line:
                break
            try:
                if last:
                    raise ValueError("line is not terminated (torn write)")
                record = json.loads(line)
                change = ConsentChange.from_json(record["change"])
                state = ConsentState.from_json(record["state"])
                previous = records[-1][1].version if records else 0
                if not state.version == change.version == record["version"] or state.version <= previous:
                    raise ValueError(f"version {state.version} does not follow {previous}")
            except (ValueError, KeyError, TypeError) as exc:
                problem = f"{self.path}:{number}: unreadable consent record ({exc})"
                offset = end
                continue
            records.append((change, state))
            good_end, problem = end, None  # a good line after a bad one is again a full snapshot
            offset = end
        return _Read(records, good_end, problem)

    def load(self) -> ConsentState:
        """The current state (version 0 with nothing granted if the file does not exist)."""
        read = self._read()
        self.problem = read.problem
        state = read.records[-1][1] if read.records else ConsentState()
        if read.problem:
            log.warning("%s; treating every grant as revoked until the state is rewritten", read.problem)
            state = replace(state, grants={})
        return state

    def stamp(self) -> tuple[int, int] | None:
        """(size, mtime) of the file: cheap to compare, to notice writes by another process."""
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return None
        return info.st_size, info.st_mtime_ns

    def history(self) -> list[ConsentChange]:
        return [change for change, _ in self._read().records]

    @contextlib.contextmanager
    def transaction(self, now: float) -> Iterator[_Transaction]:
        """Read-modify-write under an inter-process lock: nobody else writes in between.

        ``now`` is only used to date a ``recover`` record if the file needs one."""
        ensure_private_dir(self.path.parent)
        with file_lock(self.lock_path):
            read = self._read()
            state = read.records[-1][1] if read.records else ConsentState()
            recovered = None
            if read.problem:
                recovered = self._recover(read, state, now)
                state = recovered[1]
            yield _Transaction(self, state, recovered[0] if recovered else None)

    def _recover(self, read: _Read, state: ConsentState, now: float) -> tuple[ConsentChange, ConsentState]:
        log.warning("%s; cutting it off and revoking every grant", read.problem)
        truncate_synced(self.path, read.good_end)
        # The damaged line may have been a revocation or a new zone: purge as if it was.
        change = ConsentChange(state.version + 1, now, "recover", "recovery", None,
                               {"problem": read.problem, "revoked": sorted(state.grants)},
                               frozenset(state.grants) | {"location"})
        state = replace(state, version=change.version, grants={})
        append_synced(self.path, _encode(change, state))
        self.problem = None
        return change, state

    def _append(self, change: ConsentChange, state: ConsentState) -> None:
        append_synced(self.path, _encode(change, state))


class _Transaction:
    def __init__(self, store: ConsentStore, state: ConsentState, recovered: ConsentChange | None) -> None:
        self._store = store
        self.state = state
        # The ``recover`` change written when this transaction opened, if the file was damaged.
        self.recovered = recovered

    def commit(self, change: ConsentChange, state: ConsentState) -> None:
        if not state.version == change.version == self.state.version + 1:
            raise ValueError(f"consent version must go {self.state.version} -> {self.state.version + 1}")
        self._store._append(change, state)
        self.state = state


def load_state_file(path: str | Path) -> ConsentState:
    """A consent state to run under (``demo --consent FILE``): a ``consent.jsonl`` or a state directory."""
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    if not path.is_file():
        raise ValueError(f"{path}: no such consent state file (make one with `vehicle-agent consent grant ... "
                         "--state DIR`)")
    store = ConsentStore(path)
    state = store.load()
    if store.problem:
        raise ValueError(store.problem)
    return state


__all__ = ["STATE_FILE", "ConsentStore", "load_state_file"]
