"""sd_notify over a real datagram socket (path and abstract), the watchdog interval, and progress-fed pings."""

from __future__ import annotations

import logging
import os
import socket
import time

import pytest

from agent.service.sdnotify import (
    Notifier,
    NotifyConfigError,
    ProgressWatchdog,
    notify_address,
    watchdog_interval,
)
from tests.helpers.clock import FakeClock


@pytest.fixture
def listener(tmp_path):
    """A datagram socket standing in for systemd's notify socket; yields (NOTIFY_SOCKET value, socket)."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    yield str(path), sock
    sock.close()


def received(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on ``sock``."""
    got = []
    sock.settimeout(0)
    try:
        while True:
            got.append(sock.recv(4096))
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(2)
    return got


def test_each_notification_is_one_datagram_with_the_exact_bytes(listener):
    value, sock = listener
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": value})
    assert notifier.enabled and notifier.address == value
    assert notifier.ready("sources up: truck, gps; buffer 0 batches")
    assert notifier.status("  running:\n1200 frames/s  ")
    assert notifier.watchdog()
    assert notifier.stopping("flushing buffer")
    assert notifier.extend_timeout(2.5)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    got = received(sock)
    assert got[:5] == [
        b"READY=1\nSTATUS=sources up: truck, gps; buffer 0 batches",
        b"STATUS=running: 1200 frames/s",  # STATUS= is one line: whitespace and newlines folded
        b"WATCHDOG=1",
        b"STOPPING=1\nSTATUS=flushing buffer",
        b"EXTEND_TIMEOUT_USEC=2500000",
    ]
    reload_fields = got[5].split(b"\n")
    assert len(got) == 6 and reload_fields[0] == b"RELOADING=1" and len(reload_fields) == 2
    key, usec = reload_fields[1].split(b"=")
    assert key == b"MONOTONIC_USEC" and before <= int(usec) <= after
    notifier.close()


def test_abstract_socket_names_start_with_at():
    name = f"vehicle-agent-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    try:
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert notifier.address == b"\0" + name.encode()
        assert notifier.ready()
        assert sock.recv(4096) == b"READY=1"
    finally:
        sock.close()


def test_without_notify_socket_every_call_is_a_silent_no_op():
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert notifier.ready("x") is False and notifier.watchdog() is False and notifier.stopping() is False
    watchdog = ProgressWatchdog(notifier, 10.0, status=lambda: pytest.fail("status asked although nobody listens"))
    assert watchdog.progress() is False and watchdog.pings == 0


def test_unreachable_socket_returns_false_and_warns_once(tmp_path, caplog):
    notifier = Notifier(str(tmp_path / "gone"))
    with caplog.at_level(logging.WARNING, logger="agent.service.sdnotify"):
        assert notifier.ready() is False
        assert notifier.watchdog() is False
    assert len(caplog.records) == 1 and "cannot notify systemd" in caplog.records[0].getMessage()


def test_a_full_notify_socket_never_blocks_the_caller(listener, caplog):
    value, sock = listener  # nobody reads: the socket's queue fills up
    notifier = Notifier(value)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="agent.service.sdnotify"):
        results = [notifier.watchdog() for _ in range(5000)]
    assert time.monotonic() - started < 2
    assert results[0] is True and results[-1] is False
    queued = len(received(sock))
    assert queued == results.count(True) and 0 < queued < 5000
    assert len(caplog.records) == 1  # warned once, not 5000 times


@pytest.mark.parametrize(("fields", "bad"), [(("READY",), "READY"), (("=1",), "=1"), (("STATUS=a\nb",), "STATUS=a\nb")])
def test_malformed_fields_are_refused(listener, fields, bad):
    notifier = Notifier(listener[0])
    with pytest.raises(ValueError, match="expected KEY=VALUE") as caught:
        notifier.send(*fields)
    assert repr(bad) in str(caught.value)


def test_notify_socket_must_be_a_path_or_abstract_name():
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    with pytest.raises(NotifyConfigError, match="NOTIFY_SOCKET='relative/notify': expected an absolute path"):
        notify_address("relative/notify")


def test_watchdog_interval_from_the_environment():
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "4242"}, pid=4242) == 0.5
    assert watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "4242"}, pid=4243) is None  # not us
    assert watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}) == 0.5
    with pytest.raises(NotifyConfigError, match=r"WATCHDOG_USEC='30s': expected a whole number of microseconds"):
        watchdog_interval({"WATCHDOG_USEC": "30s"})
    with pytest.raises(NotifyConfigError, match=r"WATCHDOG_USEC='0': must be > 0"):
        watchdog_interval({"WATCHDOG_USEC": "0"})
    with pytest.raises(NotifyConfigError, match=r"WATCHDOG_PID='me': expected a process id"):
        watchdog_interval({"WATCHDOG_USEC": "1", "WATCHDOG_PID": "me"})


def test_progress_pings_at_most_every_half_interval_and_only_when_the_loop_turns(listener):
    value, sock = listener
    clock = FakeClock(100.0)
    watchdog = ProgressWatchdog(Notifier(value), interval=10.0, clock=clock)
    assert watchdog.progress()  # first turn: ping at once
    for _ in range(1000):  # a busy loop turning quickly: no flood
        clock.now += 0.004
        watchdog.progress()
    assert received(sock) == [b"WATCHDOG=1"]
    clock.now = 105.0
    assert watchdog.progress()
    assert received(sock) == [b"WATCHDOG=1"]
    clock.now = 200.0  # the loop was stuck for 95 s: nothing was sent meanwhile, nothing is sent by time alone
    assert received(sock) == []
    assert watchdog.progress() and watchdog.pings == 3


def test_progress_sends_status_with_the_ping_only_when_it_changed(listener):
    value, sock = listener
    clock = FakeClock(100.0)
    summary = {"text": "running: 0 frames"}
    asked = []

    def status() -> str:
        asked.append(clock.now)
        return summary["text"]

    watchdog = ProgressWatchdog(Notifier(value), interval=4.0, status=status, status_every=10.0, clock=clock)
    watchdog.progress()
    clock.now += 2
    watchdog.progress()
    summary["text"] = "running: 500 frames"
    clock.now += 2
    watchdog.progress()  # ping due, status not yet (10 s)
    clock.now += 8
    watchdog.progress()  # both due
    clock.now += 10
    watchdog.progress()  # both due, status unchanged: only the ping
    assert received(sock) == [b"WATCHDOG=1\nSTATUS=running: 0 frames", b"WATCHDOG=1", b"WATCHDOG=1",
                              b"WATCHDOG=1\nSTATUS=running: 500 frames", b"WATCHDOG=1"]
    assert asked == [100.0, 112.0, 122.0]


def test_status_alone_when_no_watchdog_is_configured(listener):
    value, sock = listener
    clock = FakeClock(100.0)
    assert ProgressWatchdog.from_environ(Notifier(value), {}).interval is None
    assert ProgressWatchdog.from_environ(Notifier(value), {"WATCHDOG_USEC": "20000000"}).interval == 20.0
    watchdog = ProgressWatchdog(Notifier(value), None, status=lambda: f"t={clock.now:g}", status_every=5.0,
                                clock=clock)
    watchdog.progress()
    clock.now += 4
    watchdog.progress()
    clock.now += 1
    watchdog.progress()
    assert received(sock) == [b"STATUS=t=100", b"STATUS=t=105"]
    assert watchdog.pings == 0
