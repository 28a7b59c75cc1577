"""A socketcand-protocol server on loopback, for python-can's stock ``socketcand`` client.

The wire format is in ``simulator.socketcand_protocol``.  Any channel name a
client opens is accepted; all clients share one bus unless ``send`` names a
channel.

Every client gets a bounded outgoing queue drained by its own writer thread, so
one slow client does not stall the others until its queue is full; then
``send`` blocks (up to ``send_timeout``) and only after that counts a drop for
that client.  TCP flow control carries the backpressure from a slow reader in
another process back to ``send``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import queue
import socket
import struct
import termios
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import can

from simulator.socketcand_protocol import UnsupportedFrameError, frame_line, loopback_host, parse_send

__all__ = ["SocketcandServer", "UnsupportedFrameError", "frame_line", "loopback_host", "parse_send"]

log = logging.getLogger(__name__)

# Linux ioctl: bytes in the socket's send queue not yet acknowledged by the peer.
_SIOCOUTQ = getattr(termios, "TIOCOUTQ", 0x5411)


@dataclass
class ClientStats:
    address: str
    channel: str
    queued: int = 0
    dropped: int = 0
    received: int = 0
    malformed: int = 0


class _Client:
    """One connected client: handshake and commands on a reader thread, frames on a writer thread."""

    def __init__(self, server: SocketcandServer, sock: socket.socket, address: str) -> None:
        self.server = server
        self.sock = sock
        self.stats = ClientStats(address=address, channel="")
        self._lines: deque[bytes] = deque()
        self._cond = threading.Condition()
        self._writing = False
        self.closed = False
        self.active = False
        self._reader = threading.Thread(target=self._read_loop, name=f"socketcand-read-{address}", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name=f"socketcand-write-{address}", daemon=True)

    def start(self) -> None:
        self._reader.start()

    # --- outgoing -----------------------------------------------------------------
    def enqueue(self, line: bytes, deadline: float) -> bool:
        with self._cond:
            while len(self._lines) >= self.server.queue_frames and not self.closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.stats.dropped += 1
                    return False
                self._cond.wait(remaining)
            if self.closed:
                self.stats.dropped += 1
                return False
            self._lines.append(line)
            self.stats.queued += 1
            self._cond.notify_all()
            return True

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._lines and not self.closed:
                    self._cond.wait()
                if self.closed:
                    return
                chunk = b"".join(self._lines)
                self._lines.clear()
                self._writing = True
                self._cond.notify_all()  # room in the queue again
            try:
                self.sock.sendall(chunk)
            except OSError as exc:
                log.info("socketcand client %s gone while sending: %s", self.stats.address, exc)
                self.close()
                return
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()

    def drained(self, deadline: float, stop: threading.Event | None = None) -> bool:
        """Wait until the queue is empty and the kernel has delivered every byte to the peer; False once
        ``deadline`` passed or ``stop`` is set (a client that stopped reading would hold a flush for the
        whole deadline, and its socket buffers can take a whole log)."""
        with self._cond:
            while (self._lines or self._writing) and not self.closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (stop is not None and stop.is_set()):
                    return False
                self._cond.wait(min(remaining, 0.1))
        while not self.closed and time.monotonic() < deadline:
            if stop is not None and stop.is_set():
                return False
            try:
                unacked = struct.unpack("i", fcntl.ioctl(self.sock.fileno(), _SIOCOUTQ, b"\0\0\0\0"))[0]
            except OSError:
                return True  # ioctl unsupported: the queue at least is empty
            if unacked == 0:
                return True
            time.sleep(0.005)
        return self.closed or time.monotonic() < deadline

    # --- incoming -----------------------------------------------------------------
    def _send_now(self, text: str) -> None:
        self.sock.sendall(text.encode("ascii"))

    def _read_loop(self) -> None:
        buffer = ""
        try:
            self._send_now("< hi >")
            while not self.closed:
                data = self.sock.recv(4096)
                if not data:
                    break
                buffer += data.decode("ascii", errors="replace")
                while True:
                    start = buffer.find("<")
                    end = buffer.find(">", start + 1)
                    if start < 0:
                        buffer = ""
                        break
                    if end < 0:
                        buffer = buffer[start:]
                        if len(buffer) > 4096:
                            raise ValueError("command longer than 4096 characters")
                        break
                    self._command(buffer[start + 1 : end].strip())
                    buffer = buffer[end + 1 :]
        except (OSError, ValueError) as exc:
            log.info("socketcand client %s: %s", self.stats.address, exc)
        finally:
            self.close()

    def _command(self, command: str) -> None:
        keyword, _, rest = command.partition(" ")
        if keyword == "send" and self.active:
            try:
                msg = parse_send(rest)
            except ValueError as exc:
                self.stats.malformed += 1
                log.warning("socketcand client %s: %s", self.stats.address, exc)
                return
            self.stats.received += 1
            self.server._from_client(self, msg)
        elif keyword == "open" and not self.stats.channel:
            self.stats.channel = rest.strip() or "can0"
            self._send_now("< ok >")
        elif keyword == "rawmode" and self.stats.channel and not self.active:
            self._send_now("< ok >")
            # python-can reads "< ok >" with a single recv and compares it exactly:
            # frames must not share that segment, so give the client a moment.
            time.sleep(self.server.handshake_grace)
            self._writer.start()
            self.active = True
            self.server._activate(self)
        elif not self.active:
            self._send_now(f"< error unsupported command {keyword} >")
        else:
            # An "< error ... >" reply would be parsed as an error frame by python-can.
            self.stats.malformed += 1
            log.warning("socketcand client %s: ignoring command %r", self.stats.address, command)

    def close(self) -> None:
        with self._cond:
            if self.closed:
                return
            self.closed = True
            self._cond.notify_all()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        self.server._deactivate(self)


@dataclass
class ServerStats:
    sent: int = 0
    refused: int = 0
    received: int = 0
    received_dropped: int = 0
    clients: list[ClientStats] = field(default_factory=list)

    @property
    def dropped(self) -> int:
        return sum(c.dropped for c in self.clients)


class SocketcandServer:
    """socketcand raw-mode server on loopback; one CAN bus shared by all clients.

    ``send(msg)`` puts a frame on the bus (every client receives it, or with
    ``channel`` only clients that opened that channel); frames clients send
    reach the other clients on their channel and ``recv()``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, queue_frames: int = 8192,
                 send_timeout: float = 10.0, handshake_grace: float = 0.2, recv_queue: int = 65536) -> None:
        self.host = loopback_host(host)
        self.requested_port = port
        self.queue_frames = queue_frames
        self.send_timeout = send_timeout
        self.handshake_grace = handshake_grace
        self._listener: socket.socket | None = None
        self._clients: list[_Client] = []  # active (handshake done) clients
        self._all: list[_Client] = []
        self._retired: list[ClientStats] = []
        self._lock = threading.Condition()
        self._received: queue.Queue[can.Message] = queue.Queue(maxsize=recv_queue)
        self._stats = ServerStats()
        self._accept_thread: threading.Thread | None = None
        self._stopped = threading.Event()

    # --- lifecycle ----------------------------------------------------------------
    def start(self) -> SocketcandServer:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.host, self.requested_port))
        except OSError as exc:
            listener.close()
            raise OSError(f"socketcand server: cannot listen on {self.host}:{self.requested_port}: "
                          f"{exc.strerror or exc}") from None
        listener.listen(16)
        self._listener = listener
        self._accept_thread = threading.Thread(target=self._accept_loop, name="socketcand-accept", daemon=True)
        self._accept_thread.start()
        return self

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("socketcand server not started")
        return self._listener.getsockname()[1]

    def __enter__(self) -> SocketcandServer:
        return self if self._listener else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self, flush_timeout: float = 0.0, interrupt: threading.Event | None = None) -> None:
        """Close every client, after up to ``flush_timeout`` s of flushing (cut short by ``interrupt``)."""
        if flush_timeout > 0:
            self.flush(flush_timeout, interrupt)
        self._stopped.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
            with contextlib.suppress(OSError):
                self._listener.close()
        for client in list(self._all):
            client.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=2.0)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopped.is_set():
            try:
                sock, address = self._listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = _Client(self, sock, f"{address[0]}:{address[1]}")
            with self._lock:
                self._all.append(client)
            client.start()

    def _activate(self, client: _Client) -> None:
        with self._lock:
            self._clients.append(client)
            self._lock.notify_all()

    def _deactivate(self, client: _Client) -> None:
        with self._lock:
            if client in self._clients:
                self._clients.remove(client)
            if client in self._all:
                self._all.remove(client)
                self._retired.append(client.stats)
            self._lock.notify_all()

    # --- the bus ------------------------------------------------------------------
    @property
    def client_count(self) -> int:
        with self._lock:
            return len(self._clients)

    def wait_for_clients(self, n: int, timeout: float, stop: threading.Event | None = None) -> bool:
        """True once ``n`` clients have completed the handshake, False after ``timeout`` s or once ``stop``
        is set (looked at every 0.1 s)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._clients) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (stop is not None and stop.is_set()):
                    return False
                self._lock.wait(min(remaining, 0.1))
        return True

    def send(self, msg: can.Message, channel: str | None = None, timestamp: float | None = None) -> int:
        """Queue ``msg`` for every client (or those that opened ``channel``); returns how many.

        Blocks while a client's queue is full, up to ``send_timeout``; then the
        frame is dropped for that client and counted in its stats.
        """
        try:
            line = frame_line(msg, time.time() if timestamp is None else timestamp)
        except UnsupportedFrameError:
            self._stats.refused += 1
            raise
        return self._fan_out(line, channel, exclude=None)

    def _fan_out(self, line: bytes, channel: str | None, exclude: _Client | None) -> int:
        with self._lock:
            targets = [c for c in self._clients if c is not exclude and (channel is None or c.stats.channel == channel)]
        deadline = time.monotonic() + self.send_timeout
        delivered = sum(client.enqueue(line, deadline) for client in targets)
        self._stats.sent += 1
        return delivered

    def _from_client(self, client: _Client, msg: can.Message) -> None:
        msg.channel = client.stats.channel
        self._fan_out(frame_line(msg, msg.timestamp), client.stats.channel, exclude=client)
        try:
            self._received.put_nowait(msg)
            self._stats.received += 1
        except queue.Full:
            self._stats.received_dropped += 1

    def recv(self, timeout: float | None = None) -> can.Message | None:
        """Next frame a client sent (``channel`` = the channel it opened), or None on timeout."""
        try:
            return self._received.get(timeout=timeout)
        except queue.Empty:
            return None

    def flush(self, timeout: float = 10.0, stop: threading.Event | None = None) -> bool:
        """Wait until every queued frame has reached every client's TCP stack; False after ``timeout`` s or
        once ``stop`` is set."""
        deadline = time.monotonic() + timeout
        with self._lock:
            clients = list(self._clients)
        return all(client.drained(deadline, stop) for client in clients)

    def stats(self) -> ServerStats:
        with self._lock:
            clients = [*self._retired, *(c.stats for c in self._all)]
        return ServerStats(sent=self._stats.sent, refused=self._stats.refused, received=self._stats.received,
                           received_dropped=self._stats.received_dropped,
                           clients=[ClientStats(**vars(c)) for c in clients])
