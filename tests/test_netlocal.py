"""CAN stays on this machine (agent/netlocal.py): the interface, the channel and every argument that names a
host or a URL are checked, for every interface, before python-can opens anything.

No test here opens a connection to a non-loopback address: socket connects, DNS lookups and python-can's
``Bus`` are made to fail, so a refusal that came too late would fail the test instead of reaching out.
"""

from __future__ import annotations

import socket

import can
import pytest

from agent.config import BusConfig, ConfigError, parse_config
from agent.netlocal import bus_problem, is_loopback, local_bus_problem
from agent.sources.bus_open import BusUrlError, bus_kwargs_from_config, open_bus

REFUSED = [
    # (kwargs, field named, words in the message)
    ({"interface": "slcan", "channel": "socket://192.0.2.7:3333"}, "channel", "(socket://) to host '192.0.2.7'"),
    ({"interface": "serial", "channel": "rfc2217://192.0.2.7:2217"}, "channel", "(rfc2217://) to host '192.0.2.7'"),
    ({"interface": "robotell", "channel": "SOCKET://[2001:db8::1]:1"}, "channel", "host '2001:db8::1'"),
    ({"interface": "slcan", "channel": "socket://gateway.example:3333"}, "channel", "host 'gateway.example'"),
    ({"interface": "slcan", "channel": "socket://localhost.example:3333"}, "channel", "host 'localhost.example'"),
    ({"interface": "slcan", "channel": "socket://127.0.0.1@192.0.2.7:3333"}, "channel", "host '192.0.2.7'"),
    ({"interface": "slcan", "channel": "spy://socket://192.0.2.7:1"}, "channel", "(spy://) not known to stay"),
    ({"interface": "serial", "channel": "http://192.0.2.7/can"}, "channel", "(http://) to host '192.0.2.7'"),
    ({"interface": "slcan", "channel": "192.0.2.7:5000"}, "channel", "is not a loopback address"),
    ({"interface": "socketcan", "channel": "0.0.0.0"}, "channel", "is not a loopback address"),
    ({"interface": "socketcand", "host": "192.0.2.7", "port": 29536, "channel": "can0"}, "host", "not loopback"),
    ({"interface": "socketcand", "host": "cand.example", "port": 29536, "channel": "can0"}, "host", "not loopback"),
    ({"interface": "socketcand", "port": 29536, "channel": "can0"}, "host", "host '' is not loopback"),
    ({"interface": "socketcand", "host": "127.0.0.1", "port": 1, "channel": "socket://192.0.2.7:1"}, "channel",
     "host '192.0.2.7'"),
    ({"interface": "slcan", "channel": "/dev/ttyUSB0", "host": "192.0.2.7"}, "host", "is not a loopback address"),
    ({"interface": "kvaser", "channel": 0, "server_ip": "192.0.2.7"}, "server_ip", "is not a loopback address"),
    ({"interface": "gs_usb", "channel": 0, "address": "gateway.example"}, "address", "host names are not looked up"),
    ({"interface": "virtual", "channel": "x", "extra": {"url": "tcp://192.0.2.7:1"}}, "extra.url", "(tcp://)"),
    ({"interface": "virtual", "channel": "x", "peers": ["127.0.0.1", "192.0.2.7"]}, "peers[1]", "not a loopback"),
    ({"interface": "pcan", "channel": "PCAN_LANBUS1"}, "channel", "PCAN-LAN channel"),
    ({"interface": "etas", "channel": "ETAS://ETH/ES910:abcd/CAN:1"}, "channel", "ETAS device on Ethernet"),
    ({"interface": "slcan", "channel": "/dev/ttyUSB0", "config_context": "remote"}, "config_context",
     "configuration files"),
    ({"interface": "remote_can", "channel": "192.0.2.9"}, "interface", "not a local CAN interface"),
    ({"interface": "ethernet_can", "channel": "x"}, "interface", "not a local CAN interface"),
]

ALLOWED = [
    {"interface": "socketcan", "channel": "can0"},
    {"interface": "socketcan", "channel": "vcan0"},
    {"interface": "virtual", "channel": "bench-1"},
    {"interface": "slcan", "channel": "/dev/ttyUSB0", "tty_baudrate": 115200},
    {"interface": "slcan", "channel": "/dev/serial/by-path/pci-0000:00:14.0-usb-0:2:1.0-port0"},
    {"interface": "slcan", "channel": "COM3"},
    {"interface": "serial", "channel": "loop://"},
    {"interface": "slcan", "channel": "socket://127.0.0.1:3333"},
    {"interface": "slcan", "channel": "socket://localhost:3333"},
    {"interface": "serial", "channel": "rfc2217://[::1]:2217"},
    {"interface": "pcan", "channel": "PCAN_USBBUS1"},
    {"interface": "etas", "channel": "ETAS://USB/ES581.4:123456/CAN:1"},
    {"interface": "gs_usb", "channel": 0, "bus": 1, "address": 5},
    {"interface": "socketcand", "host": "127.0.0.1", "port": 29536, "channel": "can0"},
    {"interface": "socketcand", "host": "127.8.9.10", "port": 29536, "channel": "can0", "tcp_tune": True},
    {"interface": "socketcand", "host": "::1", "port": 29536, "channel": "can0"},
    {"interface": "socketcand", "host": "localhost", "port": 29536, "channel": "can0"},
]


@pytest.fixture
def no_network(monkeypatch):
    """Any connect, name lookup or python-can Bus from here on fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"reached the network or python-can: {args!r}")

    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "create_connection"):
        monkeypatch.setattr(socket, name, refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(can, "Bus", refuse)


@pytest.mark.parametrize(("kwargs", "field", "words"), REFUSED, ids=[str(i) for i in range(len(REFUSED))])
def test_buses_that_would_leave_the_machine_are_refused(kwargs, field, words, no_network):
    problem = bus_problem(kwargs)
    assert problem is not None and problem.field == field, problem
    assert words in problem.message and local_bus_problem(kwargs) == problem.message
    assert problem.message.startswith(f"{kwargs['interface']} {field}") or field == "interface"
    with pytest.raises(BusUrlError) as info:
        open_bus(dict(kwargs))
    assert problem.message in str(info.value)


@pytest.mark.parametrize("kwargs", ALLOWED, ids=[str(i) for i in range(len(ALLOWED))])
def test_local_devices_and_loopback_hosts_are_allowed(kwargs, no_network):
    assert bus_problem(kwargs) is None


def test_names_are_never_looked_up(no_network):
    assert is_loopback("localhost") and not is_loopback("localhost.localdomain")
    assert not is_loopback("ip6-localhost") and not is_loopback("127.1")  # short forms are not parsed either
    assert bus_problem({"interface": "slcan", "channel": "socket://my-gateway:1"}) is not None


def test_a_config_naming_a_remote_host_is_refused_before_any_socket_opens(no_network):
    text = ("buses:\n  - name: pt\n    interface: slcan\n    channel: /dev/ttyUSB0\n"
            "    options: {host: 192.0.2.7}\n")
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="a.yaml")
    message = str(info.value)
    assert message.startswith("a.yaml:") and "buses[0]." in message
    assert "slcan host '192.0.2.7' is not a loopback address" in message


def test_a_channel_url_is_refused_on_the_way_to_the_bus(no_network):
    # What `vehicle-agent run` does with a bus of its config: bus_kwargs_from_config, then open_bus (checked
    # again there, whatever the config check let through).
    bus = BusConfig(name="pt", interface="slcan", channel="socket://192.0.2.7:3333")
    with pytest.raises(BusUrlError, match=r"slcan channel 'socket://192\.0\.2\.7:3333' opens a network connection"):
        open_bus(bus_kwargs_from_config(bus))


def test_a_channel_url_is_refused_in_the_config(no_network):
    with pytest.raises(ConfigError) as info:
        parse_config("buses:\n  - name: pt\n    interface: slcan\n    channel: socket://192.0.2.7:3333\n",
                     source="a.yaml")
    assert str(info.value).startswith("a.yaml:4: buses[0].channel: slcan channel 'socket://192.0.2.7:3333'")
    with pytest.raises(ConfigError) as info:
        parse_config("buses:\n  - name: pt\n    interface: slcan\n    channel: /dev/ttyUSB0\n"
                     "    options: {host: 192.0.2.7}\n", source="a.yaml")
    assert str(info.value).startswith("a.yaml:5: buses[0].options: slcan host '192.0.2.7'")
