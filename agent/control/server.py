"""The control socket server: a Unix stream socket, mode 0600, JSON lines.

Request  ``{"cmd": "consent.grant", "args": {"category": "location", ...}}``
Response ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``

Only the agent's own user can connect: the socket file is created 0600 (bound
under a 0177 umask, then chmod'ed), it lives in the 0700 state directory, and
each connection's peer credentials (SO_PEERCRED) are checked as well, so even a
socket file loosened by hand does not let another user in.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.control.registry import CommandRegistry, Handler

log = logging.getLogger(__name__)

CONTROL_SOCKET = "control.sock"
MAX_LINE = 64 * 1024
# Connections served at once (one thread each, refusals included): the unit allows 128 tasks in all.
MAX_CONNECTIONS = 8
_SUN_PATH_MAX = 107  # Linux sockaddr_un.sun_path, without the terminating NUL


def control_socket_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / CONTROL_SOCKET


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class ControlServer:
    def __init__(self, path: str | Path, handlers: Mapping[str, Handler] | CommandRegistry) -> None:
        self.path = Path(path)
        self.registry = handlers if isinstance(handlers, CommandRegistry) else CommandRegistry(handlers)
        self.allowed_uids = frozenset({os.geteuid()})
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.busy_refusals = 0

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        if len(os.fsencode(self.path)) > _SUN_PATH_MAX:
            raise ValueError(f"control socket path is too long for a Unix socket ({self.path}); "
                             "use a shorter state directory")
        self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the file is born 0600: no window where others could connect
        try:
            sock.bind(str(self.path))
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        sock.listen(8)
        sock.settimeout(0.2)
        self._sock = sock
        self._stop.clear()
        self._thread = threading.Thread(target=self._accept_loop, name="control-socket", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(2.0)
        self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _remove_stale(self) -> None:
        if not self.path.exists() and not self.path.is_symlink():
            return
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.path))
        except (ConnectionRefusedError, FileNotFoundError):
            self.path.unlink()  # left over by an agent that died
            return
        except OSError as exc:
            raise ValueError(f"{self.path} exists and is not a usable socket ({exc.strerror or exc})") from None
        finally:
            probe.close()
        raise ValueError(f"another agent is already listening on {self.path}")

    # -- serving ----------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                raise
            if not self._slots.acquire(blocking=False):
                self.busy_refusals += 1
                with conn, contextlib.suppress(OSError):
                    conn.settimeout(0.2)  # bounded: this is the accept loop
                    conn.sendall(_encode({"ok": False, "error": f"busy: {MAX_CONNECTIONS} connections open"}))
                    conn.shutdown(socket.SHUT_WR)
                    # Read the request before closing: closing on unread data answers the peer's write with
                    # EPIPE/a reset instead of the reason (seen as a flaky BrokenPipeError in the test).
                    conn.recv(4096)
                continue
            uid = peer_uid(conn)
            if uid not in self.allowed_uids:
                log.warning("control socket: refused a connection from uid %d", uid)
                target = _refuse
            else:
                target = self._serve
            threading.Thread(target=self._in_slot, args=(target, conn), name="control-conn", daemon=True).start()

    def _in_slot(self, target: Any, conn: socket.socket) -> None:
        try:
            target(conn)
        finally:
            self._slots.release()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30.0)
        with conn, conn.makefile("rb") as reader:
            while not self._stop.is_set():
                try:
                    line = reader.readline(MAX_LINE + 1)
                except (OSError, TimeoutError):
                    return
                if not line:
                    return
                if len(line) > MAX_LINE:
                    conn.sendall(_encode({"ok": False, "error": f"request longer than {MAX_LINE} bytes"}))
                    return
                try:
                    conn.sendall(_encode(self.handle_line(line)))
                except OSError:
                    return

    def handle_line(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return {"ok": False, "error": "request is not JSON"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": 'request must be {"cmd": NAME, "args": {...}}'}
        name, args = request["cmd"], request.get("args") or {}
        if not isinstance(args, dict):
            return {"ok": False, "error": "args must be an object"}
        if name == "commands":
            return {"ok": True, "result": sorted([*self.registry, "commands"])}
        handler = self.registry.get(name)
        if handler is None:
            return {"ok": False, "error": f"unknown command {name!r} (known: {', '.join(sorted(self.registry))})"}
        try:
            return {"ok": True, "result": handler(**args)}
        except TypeError as exc:
            return {"ok": False, "error": f"{name}: bad arguments ({exc})"}
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug in a handler must not take the socket down
            log.exception("control command %s failed", name)
            return {"ok": False, "error": f"internal error in {name}: {type(exc).__name__}"}


def _refuse(conn: socket.socket) -> None:
    """Say no without executing anything; drain what the peer sent so the answer is not lost to a reset."""
    with conn, contextlib.suppress(OSError):
        conn.settimeout(1.0)
        conn.sendall(_encode({"ok": False, "error": "permission denied"}))
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(4096):
            pass


def _encode(response: dict[str, Any]) -> bytes:
    return json.dumps(response, separators=(",", ":"), default=str).encode() + b"\n"


__all__ = ["CONTROL_SOCKET", "ControlServer", "control_socket_path", "peer_uid"]
