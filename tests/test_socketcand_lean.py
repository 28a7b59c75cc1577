"""The lean socketcand client (agent.canio.socketcand) against python-can's stock client and odd servers.

Every shared real log is served by the simulator's socketcand server to both clients at once: the lean
one must hand out the very frames the stock one does (id, extended flag, dlc, data, error/remote flags,
order, timestamps to the bit, channel), as many as the log holds.  Fake servers (a few lines of socket
code below) show what happens with garbage, a line cut short, a server that closes, a refused handshake.
"""

from __future__ import annotations

import importlib.metadata
import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import can
import pytest

from agent.canio.socketcand import LeanSocketcandBus, SocketcandConnectionClosed
from agent.sources.log import LogSource
from simulator.socketcand_server import SocketcandServer, UnsupportedFrameError
from tests.helpers.real_logs import REAL_LOGS

pytestmark = pytest.mark.transport

# python-can's stock client warns on every TCP read that ends mid-frame.
logging.getLogger("can.interfaces.socketcand").setLevel(logging.ERROR)

# python-can's own test logs with error and remote frames (the real logs have none).
ODD_FRAME_LOGS = ("copyleft/python-can-testdata/logfile_errorframes.asc", "copyleft/python-can-testdata/logfile.asc")


def lean(port: int, channel: str = "can0", **kwargs) -> LeanSocketcandBus:
    return can.Bus(interface="socketcand_lean", host="127.0.0.1", port=port, channel=channel, **kwargs)


def key(msg: can.Message) -> tuple:
    """Everything a client makes of a frame."""
    return (msg.arbitration_id, msg.is_extended_id, msg.dlc, bytes(msg.data), msg.is_error_frame,
            msg.is_remote_frame, msg.is_fd, msg.timestamp, msg.channel, msg.is_rx)


def one_by_one(bus: can.BusABC) -> Callable[[], list[can.Message]]:
    def read() -> list[can.Message]:
        msg = bus.recv(0.2)
        return [msg] if msg is not None else []
    return read


def read_all(read: Callable[[], list[can.Message]], expected: list[int], out: list[can.Message],
             timeout: float = 60.0) -> None:
    """Read until ``out`` holds ``expected[0]`` frames (lowered once the sender knows what it refused)."""
    deadline = time.monotonic() + timeout
    while len(out) < expected[0] and time.monotonic() < deadline:
        out.extend(read())


# --- the same frames as the stock client, for every shared log ---------------------------------------------------

@pytest.mark.parametrize("log_path", [log.path for log in REAL_LOGS] + list(ODD_FRAME_LOGS))
def test_every_shared_log_reads_exactly_as_through_the_stock_client(shared_data: Path, log_path: str):
    frames = [msg for _bus, msg in LogSource(shared_data / log_path)]
    assert frames, log_path
    server = SocketcandServer().start()
    stock = can.Bus(interface="socketcand", host="127.0.0.1", port=server.port, channel="can0")
    by_recv, by_block = lean(server.port), lean(server.port)
    got: dict[str, list[can.Message]] = {"stock": [], "recv": [], "block": []}
    try:
        assert server.wait_for_clients(3, 5)
        refused = 0
        sent: list[can.Message] = []
        reads = {"stock": one_by_one(stock), "recv": one_by_one(by_recv),
                 "block": lambda: by_block.recv_block(0.2, 500)}
        expected = [len(frames)]
        readers = [threading.Thread(target=read_all, args=(read, expected, got[name]), daemon=True)
                   for name, read in reads.items()]
        for reader in readers:
            reader.start()
        for msg in frames:
            try:
                server.send(msg, timestamp=msg.timestamp)  # the log's own clock, as text with 6 decimals
                sent.append(msg)
            except UnsupportedFrameError:
                refused += 1
        expected[0] = len(sent)
        assert refused == sum(m.is_remote_frame or (m.is_fd and not m.is_error_frame) for m in frames)
        # Count against the log: wait until each reader has the log's frame count (less what the protocol
        # cannot carry), then make sure nothing extra follows.
        for reader in readers:
            reader.join(60)
        time.sleep(0.2)
        for name, bus in (("stock", stock), ("recv", by_recv)):
            assert bus.recv(0.1) is None, name
        assert by_block.recv_block(0.1, 10) == []
        assert len(got["stock"]) == len(got["recv"]) == len(got["block"]) == len(sent) == len(frames) - refused
        assert [key(m) for m in got["recv"]] == [key(m) for m in got["stock"]]
        assert [key(m) for m in got["block"]] == [key(m) for m in got["stock"]]
        assert by_recv.malformed == by_block.malformed == 0
        # And both are the log's frames, timestamps rounded to the protocol's microseconds.
        for original, received in zip(sent, got["recv"]):
            assert received.timestamp == float(f"{original.timestamp:.6f}")
            assert received.is_error_frame == original.is_error_frame
            if original.is_error_frame:  # the protocol carries no error details: one zero byte, extended id
                assert (received.arbitration_id, received.is_extended_id, bytes(received.data)) == (
                    original.arbitration_id & 0x1FFFFFFF, True, b"\0")
            else:
                assert (received.arbitration_id, received.is_extended_id, bytes(received.data)) == (
                    original.arbitration_id, original.is_extended_id, bytes(original.data))
        if log_path in ODD_FRAME_LOGS:
            assert any(m.is_error_frame for m in got["recv"]) and refused > 0
    finally:
        for bus in (stock, by_recv, by_block):
            bus.shutdown()
        server.stop()


# --- recv_block, timeouts, send -----------------------------------------------------------------------------------

@pytest.fixture
def server():
    srv = SocketcandServer().start()
    yield srv
    srv.stop()


def numbered(n: int, first_id: int = 0x100) -> list[can.Message]:
    return [can.Message(arbitration_id=first_id + i % 0x600, is_extended_id=False, data=i.to_bytes(3, "big"))
            for i in range(n)]


def test_recv_block_hands_out_what_is_parsed_in_order_at_most_max_frames(server):
    bus = lean(server.port)
    try:
        assert server.wait_for_clients(1, 5)
        for msg in numbered(50):
            server.send(msg, timestamp=7.25)
        assert server.flush(5)
        time.sleep(0.1)
        first = bus.recv_block(1.0, 20)
        assert [int.from_bytes(m.data, "big") for m in first] == list(range(20))
        started = time.monotonic()
        rest = bus.recv_block(1.0, 1000)  # already parsed: no waiting
        assert time.monotonic() - started < 0.05
        assert [int.from_bytes(m.data, "big") for m in rest] == list(range(20, 50))
        assert all(m.timestamp == 7.25 and m.channel == "can0" for m in first + rest)
        with pytest.raises(ValueError, match="max_frames"):
            bus.recv_block(0.1, 0)
    finally:
        bus.shutdown()


def test_timeouts_are_honest(server):
    bus = lean(server.port)
    try:
        assert server.wait_for_clients(1, 5)
        for timeout in (0.0, 0.05, 0.3):
            started = time.monotonic()
            assert bus.recv(timeout) is None
            assert timeout <= time.monotonic() - started < timeout + 0.25
            started = time.monotonic()
            assert bus.recv_block(timeout, 10) == []
            assert timeout <= time.monotonic() - started < timeout + 0.25
        # A frame that arrives while recv waits ends the wait at once.
        threading.Timer(0.2, server.send, args=(numbered(1)[0],)).start()
        started = time.monotonic()
        msg = bus.recv(5.0)
        assert msg is not None and msg.arbitration_id == 0x100
        assert 0.15 < time.monotonic() - started < 1.0
    finally:
        bus.shutdown()


def test_recv_block_applies_the_bus_filters(server):
    bus = lean(server.port, can_filters=[{"can_id": 0x101, "can_mask": 0x7FF, "extended": False}])
    try:
        assert server.wait_for_clients(1, 5)
        for msg in numbered(6):
            server.send(msg)
        block = bus.recv_block(2.0, 100)
        assert [m.arbitration_id for m in block] == [0x101]
        assert bus.recv_block(0.2, 100) == []
    finally:
        bus.shutdown()


def test_send_reaches_the_server_and_the_other_clients(server):
    sender = lean(server.port)
    stock = can.Bus(interface="socketcand", host="127.0.0.1", port=server.port, channel="can0")
    try:
        assert server.wait_for_clients(2, 5)
        sender.send(can.Message(arbitration_id=0x18DAF110, is_extended_id=True, data=b"\x02\x10\x03"))
        sender.send(can.Message(arbitration_id=0x7DF, is_extended_id=False, data=b"\x01\x0d"))
        sender.send(can.Message(arbitration_id=0x7, is_extended_id=True, data=b""))
        received = [server.recv(2) for _ in range(3)]
        assert [(m.arbitration_id, m.is_extended_id, bytes(m.data), m.channel) for m in received] == [
            (0x18DAF110, True, b"\x02\x10\x03", "can0"), (0x7DF, False, b"\x01\x0d", "can0"), (0x7, True, b"", "can0")]
        forwarded = [stock.recv(2) for _ in range(3)]
        assert [(m.arbitration_id, m.is_extended_id, bytes(m.data)) for m in forwarded] == [
            (0x18DAF110, True, b"\x02\x10\x03"), (0x7DF, False, b"\x01\x0d"), (0x7, True, b"")]
        assert sender.recv(0.2) is None  # the server does not echo a client's own frames
        for refused in (can.Message(arbitration_id=0x10, is_remote_frame=True, dlc=2),
                        can.Message(arbitration_id=0x10, is_fd=True, data=bytes(12)),
                        can.Message(arbitration_id=0x10, is_error_frame=True)):
            with pytest.raises(can.CanOperationError, match="cannot send"):
                sender.send(refused)
        assert server.stats().received == 3 and all(c.malformed == 0 for c in server.stats().clients)
    finally:
        sender.shutdown()
        stock.shutdown()


# --- fake servers: what a real server may do that ours does not ---------------------------------------------------

class FakeServer:
    """One connection on 127.0.0.1, handled by ``script(conn)`` in a thread."""

    def __init__(self, script: Callable[[socket.socket], None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.script = script
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            self.script(conn)

    def close(self) -> None:
        self.thread.join(5)
        self.listener.close()


def read_message(conn: socket.socket) -> bytes:
    text = b""
    while not text.endswith(b">"):
        chunk = conn.recv(1)
        if not chunk:
            break
        text += chunk
    return text


def handshake(conn: socket.socket, after_rawmode: bytes = b"") -> None:
    conn.sendall(b"< hi >")
    assert read_message(conn) == b"< open can0 >"
    conn.sendall(b"< ok >")
    assert read_message(conn) == b"< rawmode >"
    conn.sendall(b"< ok >" + after_rawmode)  # a real server may start streaming in the same segment


def serve_then_close(stream: bytes, piecewise: bool = False) -> Callable[[socket.socket], None]:
    def script(conn: socket.socket) -> None:
        handshake(conn, b"" if piecewise else stream)
        if piecewise:  # one byte per segment: every line arrives in pieces
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(len(stream)):
                conn.sendall(stream[i:i + 1])
        time.sleep(0.3)
    return script


GOOD = [b"< frame 123 1.000001 0A0B >", b"< frame 18FEF100 2.500000 0102030405060708 >", b"< frame 7FF 3.000000  >",
        b"< error 00000080 4.000000 >", b"< frame 00000007 5.000000 FF >"]
GOOD_KEYS = [(0x123, False, 2, b"\x0a\x0b", False, 1.000001), (0x18FEF100, True, 8, bytes(range(1, 9)), False, 2.5),
             (0x7FF, False, 0, b"", False, 3.0), (0x80, True, 1, b"\0", True, 4.0), (0x7, True, 1, b"\xff", False, 5.0)]


def short_key(msg: can.Message) -> tuple:
    return msg.arbitration_id, msg.is_extended_id, msg.dlc, bytes(msg.data), msg.is_error_frame, msg.timestamp


def collect_until_closed(bus: can.BusABC) -> tuple[list[can.Message], SocketcandConnectionClosed]:
    got: list[can.Message] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            msg = bus.recv(1.0)
        except SocketcandConnectionClosed as exc:
            return got, exc
        if msg is not None:
            got.append(msg)
    raise AssertionError(f"no end of stream; got {len(got)} frames")


@pytest.mark.parametrize("piecewise", [False, True], ids=["with-the-last-ok", "byte-by-byte"])
def test_every_frame_then_a_clear_error_when_the_server_closes(piecewise):
    fake = FakeServer(serve_then_close(b"".join(GOOD), piecewise))
    bus = lean(fake.port)
    try:
        got, closed = collect_until_closed(bus)
        assert [short_key(m) for m in got] == GOOD_KEYS
        assert f"127.0.0.1:{fake.port}" in str(closed) and "closed the connection" in str(closed)
        assert isinstance(closed, can.CanOperationError) and bus.closed_by_server
        with pytest.raises(SocketcandConnectionClosed):  # and so on, every time
            bus.recv_block(0.1, 10)
        assert bus.malformed == 0
    finally:
        bus.shutdown()
        fake.close()


def test_garbage_and_cut_lines_are_counted_and_the_good_frames_around_them_kept(caplog):
    stream = b"".join([
        GOOD[0],
        b"< frame 12",  # cut short: the server died mid-line and the stream went on
        GOOD[1],
        b"garbage without brackets >",
        b"< frame ZZZ 1.0 00 >",  # not hex
        GOOD[2],
        b"< echo >",  # not a frame
        b"< frame 321 6.000000 01 02 03 >",  # bytes with spaces: read whole
        GOOD[3],
        b"x" * 5000,  # a "line" far too long, then a good one
        GOOD[4],
        b"< frame 456 7.0",  # cut off by the close
    ])
    fake = FakeServer(serve_then_close(stream))
    bus = lean(fake.port)
    try:
        with caplog.at_level(logging.WARNING, logger="agent.canio.socketcand"):
            got, _closed = collect_until_closed(bus)
        assert [short_key(m) for m in got] == [*GOOD_KEYS[:3], (0x321, False, 3, b"\x01\x02\x03", False, 6.0),
                                               *GOOD_KEYS[3:]]
        # the cut line, the garbage, the bad hex, the echo, the long line, the line cut by the close
        assert bus.malformed == 6
        assert bus.last_malformed == "< frame 456 7.0"
        warnings = [r for r in caplog.records if r.name == "agent.canio.socketcand"]
        assert len(warnings) == 1 and "< frame 12" in warnings[0].getMessage()  # only the first is logged
    finally:
        bus.shutdown()
        fake.close()


def test_a_refused_handshake_names_the_address():
    def refuse(conn: socket.socket) -> None:
        conn.sendall(b"< hi >")
        read_message(conn)
        conn.sendall(b"< error could not open bus >")
        time.sleep(0.2)

    fake = FakeServer(refuse)
    try:
        with pytest.raises(can.CanInitializationError, match=rf"127\.0\.0\.1:{fake.port}.*'< ok >'.*open can0.*error"):
            lean(fake.port)
    finally:
        fake.close()


def test_a_server_that_never_answers_or_is_not_there_names_the_address():
    silent = FakeServer(lambda conn: time.sleep(1.0))
    try:
        started = time.monotonic()
        with pytest.raises(can.CanInitializationError, match=rf"127\.0\.0\.1:{silent.port}.*hi.*timeout"):
            lean(silent.port, handshake_timeout=0.3)
        assert time.monotonic() - started < 0.9
    finally:
        silent.close()
    gone = FakeServer(lambda conn: None)  # accepts, then closes at once
    try:
        with pytest.raises(can.CanInitializationError, match=rf"127\.0\.0\.1:{gone.port}.*closed the connection"):
            lean(gone.port)
    finally:
        gone.close()
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(can.CanInitializationError, match=rf"127\.0\.0\.1:{port}: cannot connect"):
        lean(port)


# --- python-can's machinery -------------------------------------------------------------------------------------

def test_the_interface_is_registered_for_python_can(server):
    (entry,) = [e for e in importlib.metadata.entry_points(group="can.interface") if e.name == "socketcand_lean"]
    assert entry.value == "agent.canio.socketcand:LeanSocketcandBus"
    assert "socketcand_lean" in can.interfaces.VALID_INTERFACES and "socketcand" in can.interfaces.VALID_INTERFACES
    bus = can.Bus(interface="socketcand_lean", host="127.0.0.1", port=server.port, channel="vcan3", ignore_config=True)
    try:
        assert type(bus) is LeanSocketcandBus
        assert bus.channel_info == f"socketcand (lean) on vcan3@127.0.0.1:{server.port}"
        assert server.wait_for_clients(1, 5)
        assert [c.channel for c in server.stats().clients] == ["vcan3"]
    finally:
        bus.shutdown()
        bus.shutdown()  # twice is fine


def test_a_notifier_with_listeners_gets_every_frame_and_then_the_close(server):
    bus = lean(server.port)
    buffered = can.BufferedReader()
    errors: list[Exception] = []

    class ErrorListener(can.Listener):
        def on_message_received(self, msg: can.Message) -> None:
            pass

        def on_error(self, exc: Exception) -> None:
            errors.append(exc)

    notifier = can.Notifier(bus, [buffered, ErrorListener()], timeout=0.1)
    try:
        assert server.wait_for_clients(1, 5)
        port = server.port
        sent = numbered(300)
        for msg in sent:
            server.send(msg, timestamp=42.0)
        got = [buffered.get_message(2.0) for _ in sent]
        assert [(m.arbitration_id, bytes(m.data)) for m in got if m] == [
            (m.arbitration_id, bytes(m.data)) for m in sent]
        server.stop()
        deadline = time.monotonic() + 5
        while not errors and time.monotonic() < deadline:
            time.sleep(0.05)
        # A Notifier whose listener handles errors keeps calling recv(), which keeps saying the same.
        assert errors and all(isinstance(exc, SocketcandConnectionClosed) for exc in errors)
        assert f"127.0.0.1:{port}" in str(errors[0])
    finally:
        notifier.stop()
        bus.shutdown()
