"""Live and log sources: bus names, several buses at once, channel mapping, drops counted."""

from __future__ import annotations

import time
from pathlib import Path

import can
import pytest

from agent.config import ConfigError, parse_config
from agent.sources.live import BusUrlError, LiveSource, bus_kwargs_from_url, open_bus
from agent.sources.log import LogError, LogSource


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
    assert bus_kwargs_from_url("socketcand://127.0.0.1:29536/can1") == {
        "interface": "socketcand", "host": "127.0.0.1", "port": 29536, "channel": "can1"}
    assert bus_kwargs_from_url("socketcan://vcan0") == {"interface": "socketcan", "channel": "vcan0"}
    for bad in ("some_net://224.0.0.1", "http://x", "socketcand://127.0.0.1/can0", "socketcan://"):
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
