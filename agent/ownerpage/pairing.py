"""Pairing and sessions of the owner's page: the only way in.

``vehicle-agent owner pair`` (run by the owner at the car's screen) makes a one-time code and shows it;
the browser that types it in gets a session (an HttpOnly, SameSite=Strict cookie) and a CSRF token that
every state-changing request must carry.  A code is used once, is valid for CODE_TTL_S, and dies after
MAX_ATTEMPTS wrong guesses (a 6-digit code can then not be found by trying).  Codes and session tokens
are kept only as SHA-256 hashes, in an owner-only SQLite file in the state directory, which the CLI that
pairs and the process that serves share.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

FILE_NAME = "owner-page.sqlite"
CODE_DIGITS = 6
CODE_TTL_S = 600.0
MAX_ATTEMPTS = 5
SESSION_TTL_S = 30 * 86_400.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS codes (hash TEXT PRIMARY KEY, expires REAL NOT NULL, attempts INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (hash TEXT PRIMARY KEY, csrf TEXT NOT NULL, created REAL NOT NULL,
                                     expires REAL NOT NULL);
"""


class PairingError(ValueError):
    """A pairing attempt refused; the text says why (shown to the person typing the code)."""


@dataclass(frozen=True)
class Session:
    token_hash: str
    csrf: str
    expires: float


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Pairing:
    def __init__(self, state_dir: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(state_dir) / FILE_NAME
        self._clock = clock
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)  # owner-only from its first byte
        os.close(fd)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        db.execute("PRAGMA busy_timeout = 10000")
        return db

    # -- codes (the CLI) ------------------------------------------------------------------------------
    def new_code(self) -> str:
        """A fresh one-time code; earlier unused codes stop working (one code on screen at a time)."""
        code = "".join(secrets.choice("0123456789") for _ in range(CODE_DIGITS))
        with self._lock, self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM codes")
            db.execute("INSERT INTO codes VALUES (?, ?, 0)", (_hash(code), self._clock() + CODE_TTL_S))
            db.execute("COMMIT")
        return code

    # -- pairing (the page) -----------------------------------------------------------------------------
    def pair(self, code: str) -> tuple[str, Session]:
        """Trade a code for a session: (the cookie's token, the session).  The code is spent either way
        when right; a wrong one counts against the code on screen."""
        now = self._clock()
        code = (code or "").strip()
        with self._lock, self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM codes WHERE expires < ? OR attempts >= ?", (now, MAX_ATTEMPTS))
                live = db.execute("SELECT hash FROM codes").fetchall()
                if not live:
                    raise PairingError("no pairing code is waiting: run `vehicle-agent owner pair` on the car's "
                                       "screen for a new one")
                if not any(hmac.compare_digest(row[0], _hash(code)) for row in live):
                    db.execute("UPDATE codes SET attempts = attempts + 1")
                    raise PairingError("that code is not right (or was already used); after "
                                       f"{MAX_ATTEMPTS} wrong tries the code stops working")
                db.execute("DELETE FROM codes")
                token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
                session = Session(_hash(token), csrf, now + SESSION_TTL_S)
                db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?)", (session.token_hash, csrf, now,
                                                                        session.expires))
                db.execute("COMMIT")
            except BaseException:
                db.execute("COMMIT")  # the attempt counts even though the pairing failed
                raise
        return token, session

    def session(self, token: str | None) -> Session | None:
        if not token:
            return None
        with self._connect() as db:
            row = db.execute("SELECT hash, csrf, expires FROM sessions WHERE hash = ?", (_hash(token),)).fetchone()
        if row is None or row[2] < self._clock():
            return None
        return Session(*row)

    def end_sessions(self) -> int:
        """Every paired browser logged out (forget me, or the owner's wish); how many there were."""
        with self._lock, self._connect() as db:
            count = db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
            db.execute("DELETE FROM sessions")
            db.execute("DELETE FROM codes")
        return count
