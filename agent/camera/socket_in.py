"""Local Unix-socket intake of camera event records.

Protocol (documented in ``docs/camera-events.md``): the camera system connects
to the stream socket and sends records as JSON lines, one record per line; the
agent answers each line with ``ok <event_id>`` or ``error <field>: <problem>``.
A rejected record is kept in the quarantine directory with its reason, as for
the spool, so nothing sent is ever lost.

The socket is created with mode 0600 (only the agent's user may connect): it
is bound under a temporary name, restricted, then renamed into place, so it is
never reachable with looser permissions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import threading
import time
from pathlib import Path

from agent.camera.events import MAX_RECORD_BYTES, CameraEventError, parse_event
from agent.camera.spool import EventHandler, quarantine_bytes

log = logging.getLogger(__name__)


class CameraSocketError(OSError):
    pass


class CameraSocketServer:
    """``on_event`` is called on the connection's thread (one per client): hand events to the
    pipeline through a queue (``IncidentRecorder.trigger`` is safe from any thread)."""

    def __init__(self, path: str | Path, on_event: EventHandler, quarantine_dir: str | Path | None = None) -> None:
        self.path = Path(path)
        self.on_event = on_event
        self.quarantine_dir = Path(quarantine_dir) if quarantine_dir is not None else None
        self.accepted = 0
        self.rejected = 0
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._counter = 0

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> CameraSocketServer:
        self._clear_stale()
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.binding")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(temporary))
            os.chmod(temporary, 0o600)
            os.rename(temporary, self.path)
            listener.listen(8)
            listener.settimeout(0.2)
        except OSError as exc:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            raise CameraSocketError(f"{self.path}: cannot listen: {exc.strerror or exc}") from None
        self._listener = listener
        self._thread = threading.Thread(target=self._accept_loop, name="camera-socket", daemon=True)
        self._thread.start()
        return self

    def _clear_stale(self) -> None:
        """A socket file left by a crashed agent is removed; a live one or any other file is an error."""
        try:
            info = self.path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode):
            raise CameraSocketError(f"{self.path}: exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.path))
        except OSError:
            self.path.unlink()
            return
        finally:
            probe.close()
        raise CameraSocketError(f"{self.path}: another process is listening on this socket")

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            for connection in list(self._connections):
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> CameraSocketServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- serving -------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if not self._stopping.is_set():
                    log.error("camera socket %s: accept failed: %s", self.path, exc)
                    time.sleep(0.2)
                continue
            with self._lock:
                self._connections.add(connection)
                self._counter += 1
                number = self._counter
            threading.Thread(target=self._serve, args=(connection, number), name=f"camera-socket-{number}",
                             daemon=True).start()

    def _serve(self, connection: socket.socket, number: int) -> None:
        connection.settimeout(None)
        try:
            with connection, connection.makefile("rb") as reader:
                line_number = 0
                while True:
                    line = reader.readline(MAX_RECORD_BYTES + 2)
                    if not line:
                        break
                    line_number += 1
                    source = f"{self.path.name}#{number}:{line_number}"
                    if not line.endswith(b"\n") and len(line) > MAX_RECORD_BYTES:
                        self._reject(line, source, f"{source}: record too large (limit {MAX_RECORD_BYTES} bytes)")
                        connection.sendall(b"error record too large\n")
                        _skip_rest_of_line(reader)
                        continue
                    if not line.strip():
                        continue
                    connection.sendall(self.handle(line.rstrip(b"\r\n"), source).encode() + b"\n")
        except OSError as exc:
            if not self._stopping.is_set():
                log.info("camera socket connection %d closed: %s", number, exc)
        finally:
            with self._lock:
                self._connections.discard(connection)

    def handle(self, record: bytes, source: str) -> str:
        """Validate and deliver one record; returns the reply line."""
        try:
            event = parse_event(record, source)
        except CameraEventError as exc:
            self._reject(record, source, str(exc))
            reply = f"{exc.field}: {exc.problem}" if exc.field else exc.problem
            return f"error {reply}"
        try:
            self.on_event(event)
        except Exception:  # the sender may retry; the record was valid
            log.exception("camera event %s: handler failed", event.event_id)
            return "error agent could not store the event; retry later"
        self.accepted += 1
        return f"ok {event.event_id}"

    def _reject(self, record: bytes, source: str, reason: str) -> None:
        self.rejected += 1
        log.warning("camera event rejected: %s", reason)
        if self.quarantine_dir is not None:
            name = f"socket-{time.strftime('%Y%m%dT%H%M%S')}-{source.replace('#', '-').replace(':', '-')}.json"
            quarantine_bytes(self.quarantine_dir, name, record, reason)


def _skip_rest_of_line(reader) -> None:
    while True:
        chunk = reader.readline(MAX_RECORD_BYTES)
        if not chunk or chunk.endswith(b"\n"):
            return
