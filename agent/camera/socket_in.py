"""Local Unix-socket intake of camera event records.

Protocol (documented in ``docs/camera-events.md``): the camera system connects
to the stream socket and sends records as JSON lines, one record per line; the
agent answers each line with ``ok <event_id>`` or ``error <field>: <problem>``.
A rejected record is kept in the quarantine directory with its reason, as for
the spool, so nothing sent is ever lost.

The socket is created with mode 0600 (only the agent's user may connect): it
is bound under a temporary name, restricted, then renamed into place, so it is
never reachable with looser permissions.

One thread serves every connection (``selectors``, non-blocking sockets), and
what a client can hold is bounded: at most ``max_connections`` at once (one
more is accepted, told ``error too many connections`` and closed at once), a
connection that sends nothing for ``idle_timeout`` seconds is closed, a record
longer than ``MAX_RECORD_BYTES`` is refused (its line is skipped), and a client
that does not read its replies is not read from until it does.  Each of these
is counted (``counters()``, in the agent's status as ``camera_socket``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.camera.events import MAX_RECORD_BYTES, CameraEventError, parse_event
from agent.camera.spool import EventHandler, quarantine_bytes

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 16
IDLE_TIMEOUT_S = 30.0
# Replies a client has not read yet; beyond this the agent stops reading its records until it catches up.
MAX_PENDING_REPLY_BYTES = 64 * 1024
_RECV_BYTES = 64 * 1024
_TICK_S = 0.2


class CameraSocketError(OSError):
    """The socket cannot be served; ``transient`` when waiting may fix it (another agent still holds it)."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    number: int
    last_active: float
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    line_number: int = 0
    skipping: bool = False  # inside a line already refused as too large: drop up to its newline
    eof: bool = False  # the client will send no more; close once the replies are out


class CameraSocketServer:
    """``on_event`` is called on the server's one thread: hand events to the pipeline through a queue
    (``IncidentRecorder.trigger`` is safe from any thread)."""

    def __init__(self, path: str | Path, on_event: EventHandler, quarantine_dir: str | Path | None = None, *,
                 max_connections: int = MAX_CONNECTIONS, idle_timeout: float = IDLE_TIMEOUT_S) -> None:
        self.path = Path(path)
        self.on_event = on_event
        self.quarantine_dir = Path(quarantine_dir) if quarantine_dir is not None else None
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.accepted = 0  # records delivered
        self.rejected = 0  # records refused (malformed, too large) and quarantined
        self.connections = 0  # connections served
        self.refused = 0  # connections closed at once: max_connections were already open
        self.idle_closed = 0  # connections closed after idle_timeout without a byte
        self.too_large = 0  # records over MAX_RECORD_BYTES (also in rejected)
        self._listener: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._thread: threading.Thread | None = None
        self._open: dict[int, _Connection] = {}
        self._stopping = threading.Event()

    def counters(self) -> dict[str, int]:
        return {"records_accepted": self.accepted, "records_rejected": self.rejected,
                "records_too_large": self.too_large, "connections": self.connections, "open": len(self._open),
                "refused_too_many": self.refused, "closed_idle": self.idle_closed}

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
            listener.listen(64)
            listener.setblocking(False)
        except OSError as exc:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            raise CameraSocketError(f"{self.path}: cannot listen: {exc.strerror or exc}") from None
        self._listener = listener
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ, None)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._serve, name="camera-socket", daemon=True)
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
        raise CameraSocketError(f"{self.path}: another process is listening on this socket", transient=True)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
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
    def _serve(self) -> None:
        selector = self._selector
        assert selector is not None
        try:
            while not self._stopping.is_set():
                for key, events in selector.select(_TICK_S):
                    if key.data is None:
                        self._accept()
                        continue
                    connection: _Connection = key.data
                    try:
                        if events & selectors.EVENT_WRITE:
                            self._send(connection)
                        if events & selectors.EVENT_READ and connection.sock.fileno() >= 0:
                            self._receive(connection)
                    except Exception:  # e.g. the quarantine cannot be written: drop this client
                        log.exception("camera socket connection %d: closed after an error", connection.number)
                        self._close(connection)
                self._close_idle(time.monotonic())
        except Exception:  # a bug here must not take the agent down silently
            log.exception("camera socket %s: server stopped", self.path)
        finally:
            for connection in list(self._open.values()):
                self._close(connection)
            selector.close()
            self._selector = None

    def _accept(self) -> None:
        assert self._listener is not None and self._selector is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: log, and let the next turn try again
                log.error("camera socket %s: accept failed: %s", self.path, exc)
                return
            if len(self._open) >= self.max_connections:
                self.refused += 1
                if self.refused in (1, 10, 100) or self.refused % 1000 == 0:
                    log.warning("camera socket %s: %d connection(s) refused, %d already open", self.path,
                                self.refused, len(self._open))
                with contextlib.suppress(OSError):
                    sock.setblocking(False)
                    sock.send(b"error too many connections\n")
                sock.close()
                continue
            sock.setblocking(False)
            self.connections += 1
            connection = _Connection(sock, self.connections, time.monotonic())
            self._open[sock.fileno()] = connection
            self._selector.register(sock, selectors.EVENT_READ, connection)

    def _receive(self, connection: _Connection) -> None:
        try:
            data = connection.sock.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.info("camera socket connection %d closed: %s", connection.number, exc)
            self._close(connection)
            return
        connection.last_active = time.monotonic()
        if not data:
            connection.eof = True
            if connection.inbuf and not connection.skipping:  # a last record without its newline
                self._line(connection, bytes(connection.inbuf))
            connection.inbuf.clear()
        else:
            connection.inbuf += data
            self._lines(connection)
        self._send(connection)

    def _lines(self, connection: _Connection) -> None:
        buffer = connection.inbuf
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            line = bytes(buffer[start:end + 1])
            start = end + 1
            if connection.skipping:
                connection.skipping = False  # the end of a refused line
                continue
            if len(line) > MAX_RECORD_BYTES + 2:
                self._too_large(connection, line)
                continue
            self._line(connection, line)
        del buffer[:start]
        if connection.skipping:
            buffer.clear()
        elif len(buffer) > MAX_RECORD_BYTES + 1:
            self._too_large(connection, bytes(buffer))
            buffer.clear()
            connection.skipping = True

    def _too_large(self, connection: _Connection, line: bytes) -> None:
        connection.line_number += 1
        source = f"{self.path.name}#{connection.number}:{connection.line_number}"
        self.too_large += 1
        reason = f"{source}: record too large (limit {MAX_RECORD_BYTES} bytes)"
        self._reject(line[:MAX_RECORD_BYTES + 2], source, reason)
        connection.outbuf += b"error record too large\n"

    def _line(self, connection: _Connection, line: bytes) -> None:
        connection.line_number += 1
        if not line.strip():
            return
        source = f"{self.path.name}#{connection.number}:{connection.line_number}"
        connection.outbuf += self.handle(line.rstrip(b"\r\n"), source).encode() + b"\n"

    def _send(self, connection: _Connection) -> None:
        if connection.outbuf:
            try:
                sent = connection.sock.send(connection.outbuf)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                log.info("camera socket connection %d closed: %s", connection.number, exc)
                self._close(connection)
                return
            if sent:
                del connection.outbuf[:sent]
                connection.last_active = time.monotonic()
        if connection.eof and not connection.outbuf:
            self._close(connection)
            return
        # Read while the replies are read; wait for the client to take them before reading more.
        events = 0 if connection.eof or len(connection.outbuf) >= MAX_PENDING_REPLY_BYTES else selectors.EVENT_READ
        if connection.outbuf:
            events |= selectors.EVENT_WRITE
        assert self._selector is not None
        if self._selector.get_key(connection.sock).events != events:
            self._selector.modify(connection.sock, events, connection)

    def _close_idle(self, now: float) -> None:
        for connection in [c for c in self._open.values() if now - c.last_active > self.idle_timeout]:
            self.idle_closed += 1
            log.info("camera socket connection %d closed: idle for %.0f s", connection.number, self.idle_timeout)
            self._close(connection)

    def _close(self, connection: _Connection) -> None:
        sock = connection.sock
        fileno = sock.fileno()
        if fileno < 0:
            return
        self._open.pop(fileno, None)
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
        sock.close()

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
