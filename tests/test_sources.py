"""Live and log sources: bus names, several buses at once, channel mapping, drops counted, buses retried."""

from __future__ import annotations

import gzip
import itertools
import re
import time
from pathlib import Path

import can
import pytest

from agent.config import ConfigError, parse_config
from agent.service.exitcodes import exit_code_for
from agent.sources.bus_open import BusUnavailable, BusUrlError, bus_kwargs_from_config, bus_kwargs_from_url, open_bus
from agent.sources.live import Backoff, LiveSource
from agent.sources.log import LogError, LogSource
from simulator.broker import free_loopback_port
from simulator.socketcand_server import SocketcandServer


def next_frame(source: LiveSource, timeout: float = 5.0) -> tuple[str, can.Message]:
    """The next ``(bus, msg)`` the source hands over (blocks of one frame here: the tests send one at a time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for bus, msgs in source.blocks(0.1, max_frames=1):
            assert len(msgs) == 1, msgs
            return bus, msgs[0]
    raise AssertionError(f"no frame within {timeout} s")


def test_two_virtual_buses_at_once_keep_their_names():
    senders = {name: can.Bus(interface="virtual", channel=f"src-{name}") for name in ("pt", "body")}
    readers = {name: open_bus(bus_kwargs_from_url(f"virtual://src-{name}")) for name in ("pt", "body")}
    source = LiveSource(readers, idle_timeout=0.5)
    try:
        for i in range(50):
            senders["pt"].send(can.Message(arbitration_id=0x100, data=[i]))
            senders["body"].send(can.Message(arbitration_id=0x200 + i, is_extended_id=True, data=[i, i]))
        got = list(source)
    finally:
        source.close()
        for bus in senders.values():
            bus.shutdown()
    pt = [m for b, m in got if b == "pt"]
    body = [m for b, m in got if b == "body"]
    assert [m.data[0] for m in pt] == list(range(50))
    assert [m.arbitration_id for m in body] == [0x200 + i for i in range(50)]
    assert all(m.channel == "body" and m.is_extended_id for m in body)


def test_full_queue_drops_are_counted_not_silent():
    sender = can.Bus(interface="virtual", channel="drops")
    reader = open_bus(bus_kwargs_from_url("virtual://drops"))
    source = LiveSource({"pt": reader}, queue_size=10, idle_timeout=0.3)
    try:
        for i in range(100):
            sender.send(can.Message(arbitration_id=1, data=[i]))
        time.sleep(0.5)  # nobody consumes: the queue fills
        received = list(source)
    finally:
        source.close()
        sender.shutdown()
    assert len(received) == 10
    assert source.dropped["pt"] == 90


def test_bus_urls():
    # A socketcand:// bus gets the agent's lean client; ?client=stock asks for python-can's own.
    assert bus_kwargs_from_url("socketcand://127.0.0.1:29536/can1") == {
        "interface": "socketcand_lean", "host": "127.0.0.1", "port": 29536, "channel": "can1"}
    assert bus_kwargs_from_url("socketcand://127.0.0.1:29536/can1?client=lean") == {
        "interface": "socketcand_lean", "host": "127.0.0.1", "port": 29536, "channel": "can1"}
    assert bus_kwargs_from_url("socketcand://127.0.0.1:29536/can1?client=stock") == {
        "interface": "socketcand", "host": "127.0.0.1", "port": 29536, "channel": "can1"}
    for bad, words in (("socketcand://127.0.0.1:1/can0?client=fast", "client 'fast': expected one of lean, stock"),
                       ("socketcand://127.0.0.1:1/can0?tcp_tune=1", "the only query"),
                       ("socketcand://127.0.0.1:1/can0?client=lean&client=stock", "the only query")):
        with pytest.raises(BusUrlError) as info:
            bus_kwargs_from_url(bad)
        assert str(info.value).startswith(bad + ":") and words in str(info.value)
    assert bus_kwargs_from_url("socketcan://vcan0") == {"interface": "socketcan", "channel": "vcan0"}
    for bad in ("some_net://127.0.0.1", "http://x", "socketcand://127.0.0.1/can0", "socketcan://"):
        with pytest.raises(BusUrlError) as info:
            bus_kwargs_from_url(bad)
        assert str(info.value).startswith(bad + ":")


def test_buses_that_would_leave_the_machine_are_refused_before_opening(tmp_path):
    remote = bus_kwargs_from_url("socketcand://192.0.2.7:29536/can0")
    with pytest.raises(BusUrlError, match=r"host '192\.0\.2\.7' is not loopback"):
        open_bus(remote)
    with pytest.raises(BusUrlError, match="interface 'ethernet_can' is not a local CAN interface"):
        open_bus({"interface": "ethernet_can", "channel": "x"})
    with pytest.raises(ConfigError) as info:
        parse_config("buses:\n  - name: pt\n    interface: socketcand\n    options: {host: 192.0.2.7, port: 1}\n",
                     source="a.yaml")
    assert str(info.value).startswith("a.yaml:4: buses[0].options: socketcand host '192.0.2.7' is not loopback")
    with pytest.raises(ConfigError) as info:
        parse_config("buses:\n  - name: pt\n    interface: ethernet_can\n", source="a.yaml")
    assert str(info.value).startswith("a.yaml:3: buses[0].interface: interface 'ethernet_can' is not a local")
    # Our lean client is held to the same rule as the stock one, whichever way it is named.
    with pytest.raises(BusUrlError, match=r"socketcand_lean host '192\.0\.2\.7' is not loopback"):
        open_bus({"interface": "socketcand_lean", "host": "192.0.2.7", "port": 1, "channel": "can0"})
    with pytest.raises(ConfigError) as info:
        parse_config("buses:\n  - name: pt\n    interface: socketcand_lean\n    options: {host: 192.0.2.7, port: 1}\n",
                     source="a.yaml")
    assert str(info.value).startswith("a.yaml:4: buses[0].options: socketcand_lean host '192.0.2.7' is not loopback")


def test_a_config_bus_chooses_its_socketcand_client(tmp_path):
    def bus(options: str, interface: str = "socketcand"):
        config = parse_config(f"buses:\n  - name: pt\n    interface: {interface}\n    options: {options}\n",
                              source="a.yaml")
        return bus_kwargs_from_config(config.buses[0])

    assert bus("{host: 127.0.0.1, port: 1}")["interface"] == "socketcand_lean"
    stock = bus("{host: 127.0.0.1, port: 1, client: stock}")
    assert stock["interface"] == "socketcand" and "client" not in stock
    for options, interface, words in (("{host: 127.0.0.1, port: 1, client: fast}", "socketcand",
                                       "client 'fast': expected one of lean, stock"),
                                      ("{client: stock}", "virtual", "client 'stock' applies to interface socketcand")):
        with pytest.raises(ConfigError) as info:
            bus(options, interface)
        assert str(info.value).startswith("a.yaml:4: buses[0].options.client: ") and words in str(info.value)


def _has_kernel_can(channel: str) -> bool:
    return Path(f"/sys/class/net/{channel}").exists()


@pytest.mark.skipif(not (_has_kernel_can("vcan0") or _has_kernel_can("can0")),
                    reason="this kernel has no vcan0/can0 interface (no vcan module); socketcan needs one")
def test_socketcan_round_trip():
    channel = "vcan0" if _has_kernel_can("vcan0") else "can0"
    sender = can.Bus(interface="socketcan", channel=channel)
    source = LiveSource({"pt": open_bus(bus_kwargs_from_url(f"socketcan://{channel}"))}, idle_timeout=0.5)
    try:
        sender.send(can.Message(arbitration_id=0x123, data=[1, 2, 3]))
        got = list(source)
    finally:
        source.close()
        sender.shutdown()
    assert [(b, m.arbitration_id, bytes(m.data)) for b, m in got] == [("pt", 0x123, b"\x01\x02\x03")]


def test_socketcan_missing_interface_is_a_clear_error():
    with pytest.raises(BusUrlError) as info:
        open_bus(bus_kwargs_from_url("socketcan://nosuchcan9"))
    assert "socketcan:nosuchcan9" in str(info.value)


def test_log_channels_map_to_buses(shared_data):
    asc = LogSource(shared_data / "logs/css_truck_j1939_and_canmod_gps.asc", bus_map={"can0": "truck", "1": "gps"})
    counts: dict[str, int] = {}
    for bus, _msg in asc:
        counts[bus] = counts.get(bus, 0) + 1
    assert counts == {"truck": 45571, "gps": 12278}
    trc = LogSource(shared_data / "copyleft/python-can-testdata/test_CanMessage_V2_1.trc")
    assert {bus for bus, _ in trc} == {"can0"}  # TRC counts from 1: channel 1 is can0
    candump = LogSource(shared_data / "logs/kona_ev_2019_pcan_ccan_power_on_ready.log")
    assert {bus for bus, _ in candump} == {"pcan", "ccan"}


def test_unknown_log_format_names_the_file(tmp_path):
    path = tmp_path / "frames.xyz"
    path.write_text("nothing")
    with pytest.raises(LogError) as info:
        LogSource(path)
    assert str(path) in str(info.value) and ".xyz" in str(info.value)


def test_complete_real_logs_read_without_a_word(shared_data):
    for name, frames in (("logs/css_nissan_leaf_uds_and_canmod_gps.blf", 5588),
                         ("logs/kona_ev_2020_comp_can_heating_clock_reset.log", 27982)):
        source = LogSource(shared_data / name)
        assert sum(1 for _ in source) == frames
        assert source.stats.error is None and source.stats.warning is None


def test_a_log_that_ended_early_keeps_its_frames_and_says_so(shared_data, tmp_path):
    data = (shared_data / "logs/css_nissan_leaf_uds_and_canmod_gps.blf").read_bytes()
    cut = tmp_path / "cut.blf"
    cut.write_bytes(data[: len(data) * 2 // 3])
    lenient = LogSource(cut, strict=False)
    kept = [(bus, msg.arbitration_id, bytes(msg.data)) for bus, msg in lenient]
    assert 0 < len(kept) < 5588 and lenient.stats.frames == len(kept)
    assert re.fullmatch(rf"{re.escape(str(cut))}: read {len(kept)} frames; the file ended early \(truncated BLF "
                        rf"object at byte \d+; the file ends at byte {len(data) * 2 // 3}\)", lenient.stats.error)
    strict = LogSource(cut)
    again = []
    with pytest.raises(LogError, match="the file ended early"):
        for bus, msg in strict:
            again.append((bus, msg.arbitration_id, bytes(msg.data)))
    assert again == kept  # every frame before the damage, then the error


def test_compressed_logs_are_checked_the_same_way(shared_data, tmp_path):
    data = (shared_data / "logs/css_nissan_leaf_uds_and_canmod_gps.blf").read_bytes()
    whole, cut = tmp_path / "whole.blf.gz", tmp_path / "cut.blf.gz"
    whole.write_bytes(gzip.compress(data))
    cut.write_bytes(gzip.compress(data[:20000]))  # a complete gzip stream of a truncated BLF
    source = LogSource(whole)
    assert sum(1 for _ in source) == 5588 and source.stats.error is None
    with pytest.raises(LogError, match=r"the file ended early \(truncated BLF object at byte \d+; the file ends "
                                       r"at byte 20000\)"):
        list(LogSource(cut))
    torn = tmp_path / "torn.blf.gz"
    torn.write_bytes(gzip.compress(data)[:9000])  # the gzip stream itself cut off
    with pytest.raises(LogError, match=f"{torn}: "):
        list(LogSource(torn))


def test_a_log_without_frames_is_a_warning_not_an_error(tmp_path):
    text = tmp_path / "notes.asc"
    text.write_text("these are my notes\nnot a CAN log\n")
    source = LogSource(text)
    assert list(source) == [] and source.stats.error is None
    assert source.stats.warning == f"{text}: no CAN frames in 33 bytes (not an ASC log?)"
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    source = LogSource(empty)
    assert list(source) == [] and source.stats.warning == f"{empty}: no CAN frames: the file is empty (0 bytes)"


# -- buses that are not there yet, or go away -------------------------------------------------------------------

FAST = Backoff(initial=0.05, maximum=0.2, jitter=0.2)


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_backoff_doubles_from_one_second_to_a_minute_with_jitter():
    backoff = Backoff()
    assert [backoff.delay(n, rng=lambda: 0.5) for n in (1, 2, 3, 4, 5, 6, 7, 8, 20)] == \
        [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert backoff.delay(1, rng=lambda: 0.0) == pytest.approx(0.8)
    assert backoff.delay(3, rng=lambda: 1.0) == pytest.approx(4.8)
    assert backoff.delay(30, rng=lambda: 1.0) == 60.0  # never above the cap


def test_a_bus_that_cannot_be_opened_yet_is_retried_while_the_others_flow():
    attempts = []

    def opener(kwargs):
        if kwargs["channel"] == "late-pt":
            attempts.append(time.monotonic())
            if len(attempts) < 4:
                raise BusUnavailable("cannot open bus socketcan:late-pt: OSError: [Errno 19] No such device")
        return open_bus(kwargs)

    senders = {name: can.Bus(interface="virtual", channel=f"late-{name}") for name in ("pt", "body")}
    source = LiveSource.connect({name: bus_kwargs_from_url(f"virtual://late-{name}") for name in ("pt", "body")},
                                backoff=FAST, opener=opener)
    try:
        states = source.states()
        assert states["body"]["state"] == "open"
        assert states["pt"]["state"] == "waiting" and "No such device" in states["pt"]["reason"]
        assert source.not_open()["pt"].startswith("waiting: cannot open bus socketcan:late-pt")
        senders["body"].send(can.Message(arbitration_id=0x200, data=[1]))
        assert next_frame(source)[0] == "body"  # the other bus flows meanwhile
        assert wait_for(lambda: source.states()["pt"]["state"] == "open")
        senders["pt"].send(can.Message(arbitration_id=0x100, data=[2]))
        bus, msg = next_frame(source)
        assert (bus, msg.channel, bytes(msg.data)) == ("pt", "pt", b"\x02")
        assert source.states()["pt"] == {"state": "open", "opens": 1, "lost": 0} and source.not_open() == {}
    finally:
        source.close()
        for sender in senders.values():
            sender.shutdown()
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert len(attempts) == 4 and gaps[1] > gaps[0] * 1.2  # backing off
    assert all(state["state"] == "stopped" for state in source.states().values())


def test_a_bus_that_can_never_work_is_a_configuration_error_at_start():
    opened = []

    def opener(kwargs):
        bus = open_bus(kwargs)
        opened.append(bus)
        return bus

    with pytest.raises(BusUrlError, match="not a local CAN interface") as info:
        LiveSource.connect({"pt": bus_kwargs_from_url("virtual://never-pt"),
                            "eth": {"interface": "ethernet_can", "channel": "x"}}, opener=opener)
    assert not isinstance(info.value, BusUnavailable) and exit_code_for(info.value) == 2
    assert len(opened) == 1 and opened[0]._is_shutdown  # what was opened is closed again
    assert exit_code_for(BusUnavailable("cannot open bus ...")) == 75


def test_a_socketcand_server_that_is_not_up_fails_fast():
    port = free_loopback_port()
    started = time.monotonic()
    with pytest.raises(BusUnavailable, match="Connection refused"):
        open_bus(bus_kwargs_from_url(f"socketcand://127.0.0.1:{port}/can0"))
    assert time.monotonic() - started < 1.0  # python-can alone busy-loops for 10 s


@pytest.mark.parametrize("client", ["lean", "stock"])
def test_a_socketcand_server_that_goes_away_is_reconnected(client):
    server = SocketcandServer(port=0).start()
    port = server.port
    source = LiveSource.connect({"pt": bus_kwargs_from_url(f"socketcand://127.0.0.1:{port}/pt?client={client}")},
                                backoff=FAST)
    try:
        assert server.wait_for_clients(1, timeout=10)
        server.send(can.Message(arbitration_id=0x10, data=[1]))
        assert next_frame(source)[1].arbitration_id == 0x10
        server.stop()
        assert wait_for(lambda: source.states()["pt"]["lost"] == 1)
        assert source.states()["pt"]["state"] == "waiting"
        server = SocketcandServer(port=port).start()
        assert server.wait_for_clients(1, timeout=10)
        server.send(can.Message(arbitration_id=0x20, data=[2]))
        assert next_frame(source)[1].arbitration_id == 0x20
        assert source.states()["pt"] == {"state": "open", "opens": 2, "lost": 1}
        assert "connection closed by the socketcand server" in source.errors[0]
    finally:
        source.close()
        server.stop()


class _DyingBus(can.BusABC):
    """Opens, then fails on the first read (an interface that is down)."""

    def __init__(self) -> None:
        super().__init__(channel="dying")

    def _recv_internal(self, timeout):
        raise can.CanOperationError("Network is down")

    def send(self, msg, timeout=None) -> None:
        pass


def test_a_bus_that_dies_right_after_opening_keeps_backing_off():
    opens = []

    def opener(kwargs):
        opens.append(time.monotonic())
        return _DyingBus()

    source = LiveSource.connect({"pt": {"interface": "virtual", "channel": "dying"}}, backoff=FAST, opener=opener)
    try:
        assert wait_for(lambda: len(opens) >= 4)
        state = source.states()["pt"]
    finally:
        source.close()
    gaps = [b - a for a, b in itertools.pairwise(opens)]
    assert gaps[2] > gaps[0] * 1.5  # not once every initial delay forever
    assert state["lost"] >= 3 and state["reason"] in ("lost: CanOperationError: Network is down", None)
