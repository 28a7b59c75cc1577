"""The socketcand server against python-can's stock socketcand client."""

from __future__ import annotations

import logging
import socket
import threading
import time

import can
import pytest

from simulator.socketcand_server import SocketcandServer, UnsupportedFrameError, frame_line, parse_send

# python-can's client warns on every TCP read that ends mid-frame.
logging.getLogger("can.interfaces.socketcand").setLevel(logging.ERROR)


def client(server: SocketcandServer, channel: str = "can0") -> can.BusABC:
    return can.Bus(interface="socketcand", host="127.0.0.1", port=server.port, channel=channel)


def receive(bus: can.BusABC, n: int, timeout: float = 10.0) -> list[can.Message]:
    frames: list[can.Message] = []
    deadline = time.monotonic() + timeout
    while len(frames) < n and time.monotonic() < deadline:
        msg = bus.recv(0.2)
        if msg is not None:
            frames.append(msg)
    return frames


def key(msg: can.Message) -> tuple:
    return msg.arbitration_id, msg.is_extended_id, msg.dlc, bytes(msg.data)


@pytest.fixture
def server():
    srv = SocketcandServer().start()
    yield srv
    srv.stop()


SAMPLES = [
    can.Message(arbitration_id=0x123, is_extended_id=False, data=b"\x01\x02"),
    can.Message(arbitration_id=0x7FF, is_extended_id=False, data=b""),
    can.Message(arbitration_id=0x000, is_extended_id=False, data=bytes(range(8))),
    can.Message(arbitration_id=0x18FEF100, is_extended_id=True, data=b"\xff" * 8),
    # A small extended id must stay extended: the client decides by the id's width.
    can.Message(arbitration_id=0x7, is_extended_id=True, data=b"\x00\x10"),
    can.Message(arbitration_id=0x1FFFFFFF, is_extended_id=True, data=b"\xab"),
]


def test_frames_reach_python_can_client_exactly(server):
    bus = client(server)
    try:
        assert server.wait_for_clients(1, 5)
        for msg in SAMPLES:
            assert server.send(msg, timestamp=1234.5) == 1
        got = receive(bus, len(SAMPLES))
        assert [key(m) for m in got] == [key(m) for m in SAMPLES]
        assert all(m.timestamp == 1234.5 and m.channel == "can0" for m in got)
        assert bus.recv(0.2) is None  # nothing extra
    finally:
        bus.shutdown()


def test_error_frames_arrive_as_error_frames(server):
    bus = client(server)
    try:
        server.wait_for_clients(1, 5)
        server.send(can.Message(arbitration_id=0x80, is_error_frame=True, is_extended_id=True))  # bus-off class
        (got,) = receive(bus, 1)
        assert got.is_error_frame and got.arbitration_id == 0x80
    finally:
        bus.shutdown()


def test_remote_and_fd_frames_are_refused_and_counted(server):
    with pytest.raises(UnsupportedFrameError) as remote:
        server.send(can.Message(arbitration_id=0x10, is_remote_frame=True, dlc=2))
    assert remote.value.kind == "remote frames"
    with pytest.raises(UnsupportedFrameError) as fd:
        server.send(can.Message(arbitration_id=0x10, is_fd=True, data=bytes(12)))
    assert fd.value.kind == "CAN FD frames"
    assert server.stats().refused == 2


def test_several_clients_each_get_every_frame_in_order_and_client_sends_are_forwarded(server):
    buses = [client(server) for _ in range(3)]
    try:
        assert server.wait_for_clients(3, 5)
        sent = [can.Message(arbitration_id=0x100 + i % 0x600, is_extended_id=i % 3 == 0, data=i.to_bytes(4, "big"))
                for i in range(2000)]
        for msg in sent:
            assert server.send(msg) == 3
        for bus in buses:
            assert [key(m) for m in receive(bus, len(sent))] == [key(m) for m in sent]

        # A frame from client 0 reaches clients 1 and 2 and the server, not its sender.
        buses[0].send(can.Message(arbitration_id=0x18DAF110, is_extended_id=True, data=b"\x02\x10\x03"))
        buses[0].send(can.Message(arbitration_id=0x7DF, is_extended_id=False, data=b"\x01\x0d"))
        for bus in buses[1:]:
            got = receive(bus, 2)
            assert [key(m) for m in got] == [(0x18DAF110, True, 3, b"\x02\x10\x03"), (0x7DF, False, 2, b"\x01\x0d")]
        assert buses[0].recv(0.3) is None
        first, second = server.recv(2), server.recv(2)
        assert (first.arbitration_id, first.channel, bytes(first.data)) == (0x18DAF110, "can0", b"\x02\x10\x03")
        assert second.arbitration_id == 0x7DF and not second.is_extended_id
    finally:
        for bus in buses:
            bus.shutdown()


def test_channel_routing_sends_only_to_clients_of_that_channel(server):
    can0, can1 = client(server, "can0"), client(server, "can1")
    try:
        server.wait_for_clients(2, 5)
        server.send(can.Message(arbitration_id=0x1, data=b"\x01"), channel="can1")
        server.send(can.Message(arbitration_id=0x2, data=b"\x02"))
        assert [m.arbitration_id for m in receive(can1, 2)] == [0x1, 0x2]
        assert [m.arbitration_id for m in receive(can0, 2, timeout=1.0)] == [0x2]
    finally:
        can0.shutdown()
        can1.shutdown()


def test_stop_with_flush_waits_until_the_client_has_everything():
    server = SocketcandServer().start()
    sock = _raw_handshake(server.port)
    chunks: list[bytes] = []
    stopping = threading.Event()

    def late_reader() -> None:
        stopping.wait(5)
        time.sleep(0.3)  # the client is busy: nothing it has not read can count as delivered
        while chunk := sock.recv(65536):
            chunks.append(chunk)

    reader = threading.Thread(target=late_reader, daemon=True)
    try:
        assert server.wait_for_clients(1, 5)
        reader.start()
        sent = [can.Message(arbitration_id=0x123, is_extended_id=False, data=i.to_bytes(3, "little"))
                for i in range(20000)]
        for msg in sent:
            server.send(msg, timestamp=1.0)
        stopping.set()
        started = time.monotonic()
        server.stop(flush_timeout=10)
        assert 0.25 < time.monotonic() - started < 5
        reader.join(5)
        lines = b"".join(chunks).decode("ascii").split(" >")[:-1]
        assert lines == [f"< frame 123 1.000000 {bytes(m.data).hex().upper()}" for m in sent]
    finally:
        sock.close()


def _raw_handshake(port: int, rcvbuf: int = 4096) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    assert sock.recv(64) == b"< hi >"
    sock.sendall(b"< open vcan0 >")
    assert sock.recv(64) == b"< ok >"
    sock.sendall(b"< rawmode >")
    assert sock.recv(64) == b"< ok >"
    return sock


def test_stalled_client_blocks_then_counts_drops_while_others_get_everything():
    # send_timeout is generous so that the healthy reader, slowed by a loaded CI machine, always catches
    # up while the server waits on the stalled one; only the stalled client may ever lose a frame.
    server = SocketcandServer(queue_frames=64, send_timeout=0.5).start()
    stalled = _raw_handshake(server.port)  # never reads again
    healthy = client(server)
    received: list[can.Message] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            msg = healthy.recv(0.1)
            if msg is not None:
                received.append(msg)

    reader = threading.Thread(target=read, daemon=True)
    try:
        assert server.wait_for_clients(2, 5)
        reader.start()
        msg = can.Message(arbitration_id=0x18FEF100, is_extended_id=True, data=bytes(8))
        sent = 0
        blocked = 0.0
        while sent < 400_000:
            started = time.monotonic()
            server.send(msg)
            blocked = max(blocked, time.monotonic() - started)
            sent += 1
            stats = {c.channel: c for c in server.stats().clients}
            if stats["vcan0"].dropped:
                break
        assert stats["vcan0"].dropped == 1, "a stalled client must eventually cost drops, counted"
        assert blocked >= 0.05  # send waited for room first
        assert stats["vcan0"].queued + stats["vcan0"].dropped == sent
        assert stats["can0"].dropped == 0
        deadline = time.monotonic() + 10
        while len(received) < sent and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(received) == sent
    finally:
        done.set()
        reader.join(2)
        healthy.shutdown()
        stalled.close()
        server.stop()


def test_handshake_errors_and_malformed_sends(server):
    sock = socket.create_connection(("127.0.0.1", server.port))
    try:
        assert sock.recv(64) == b"< hi >"
        sock.sendall(b"< bcmmode >")
        assert sock.recv(64).startswith(b"< error ")
    finally:
        sock.close()
    with pytest.raises(ValueError, match="dlc 3 but 2"):
        parse_send("123 3 1 2")
    msg = parse_send("18DAF110 3 2 10 3")
    assert (msg.arbitration_id, msg.is_extended_id, bytes(msg.data)) == (0x18DAF110, True, b"\x02\x10\x03")
    assert frame_line(can.Message(arbitration_id=0x5, is_extended_id=False, data=b"\x0a"), 1.5) == (
        b"< frame 005 1.500000 0A >")


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "192.168.0.1", "example.com", "::"])
def test_refuses_non_loopback_hosts(host):
    with pytest.raises(ValueError, match="loopback"):
        SocketcandServer(host=host)


def test_localhost_and_ipv6_loopback_are_accepted():
    assert SocketcandServer(host="localhost").host == "127.0.0.1"
    server = SocketcandServer(host="::1").start()
    try:
        assert server.port > 0
    finally:
        server.stop()


def test_a_flush_held_by_a_client_that_stopped_reading_ends_when_told_to_stop():
    """``vehicle-sim replay`` stops on SIGTERM even while its closing flush waits on a client that stopped
    reading (the whole bundled log fits in loopback socket buffers, so the replay itself never blocked)."""
    server = SocketcandServer(queue_frames=64, send_timeout=0.05).start()
    stalled = _raw_handshake(server.port)  # never reads again
    try:
        assert server.wait_for_clients(1, 5)
        msg = can.Message(arbitration_id=0x18FEF100, is_extended_id=True, data=bytes(8))
        while not server.stats().clients[0].dropped:  # socket buffers and the queue full
            server.send(msg)
        stop = threading.Event()
        threading.Timer(0.3, stop.set).start()
        started = time.monotonic()
        assert server.flush(timeout=30, stop=stop) is False
        assert 0.25 <= time.monotonic() - started < 3.0
        started = time.monotonic()
        assert server.flush(timeout=0.2) is False  # no stop: the deadline still ends it
        assert 0.15 <= time.monotonic() - started < 2.0
    finally:
        stalled.close()
        server.stop()
