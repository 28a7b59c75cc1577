"""Live buses on the command line, the way python-can's own tools take them.

``-i/--interface``, ``-c/--channel`` (repeat it for several channels on one
interface), ``-b/--bitrate``, ``--data-bitrate``, ``--fd`` and
``--bus-kwargs key=value ...`` (as ``python -m can.logger``), plus the shorter
``--bus [NAME=]URL`` (virtual://NAME, socketcand://HOST:PORT/CHANNEL,
socketcan://CHANNEL).  Whatever the spelling, the result is python-can
``Bus(**kwargs)`` arguments, opened by ``agent.sources.bus_open.open_bus`` (which
checks that CAN stays local before python-can opens anything).
"""

from __future__ import annotations

import argparse
from typing import Any

from agent.sources.bus_open import BusUrlError, bus_kwargs_from_url

BUS_URL_HELP = ("bus URL (virtual://NAME, socketcand://HOST:PORT/CHANNEL, socketcan://CHANNEL); "
                "repeat for several buses; NAME defaults to the channel")


def add_live_bus_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("live bus (as python-can's tools take it)")
    group.add_argument("--bus", dest="bus_url", action="append", default=[], metavar="[NAME=]URL", help=BUS_URL_HELP)
    group.add_argument("-i", "--interface", metavar="NAME",
                       help="python-can interface, e.g. socketcan, socketcand, virtual, pcan, vector")
    group.add_argument("-c", "--channel", action="append", default=[], metavar="CHANNEL",
                       help="channel on that interface, e.g. can0 (repeat for several)")
    group.add_argument("-b", "--bitrate", type=int, metavar="BPS", help="bitrate, e.g. 500000")
    group.add_argument("--data-bitrate", type=int, metavar="BPS", help="CAN FD data-phase bitrate")
    group.add_argument("--fd", action="store_true", help="open the bus in CAN FD mode")
    group.add_argument("--bus-kwargs", nargs="+", default=[], metavar="KEY=VALUE",
                       help="more python-can Bus arguments, e.g. host=127.0.0.1 port=29536 receive_own_messages=True")


def _value(text: str) -> Any:
    """python-can's own conversion of ``--bus-kwargs`` values: int, float, bool, else the string."""
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    if text in ("True", "true"):
        return True
    if text in ("False", "false"):
        return False
    return text


def parse_bus_kwargs(items: list[str]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for item in items:
        key, equals, text = item.partition("=")
        key = key.strip()
        if not equals or not key.isidentifier():
            raise BusUrlError(f"--bus-kwargs: expected KEY=VALUE, got {item!r}")
        kwargs[key] = _value(text)
    return kwargs


def parse_bus_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``[NAME=]URL`` -> (bus name, python-can kwargs)."""
    name, equals, url = spec.partition("=")
    if not equals or "://" in name:
        name, url = "", spec
    kwargs = bus_kwargs_from_url(url)
    return name or str(kwargs["channel"]), kwargs


def live_bus_specs(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """Every bus the command line names, as (name, python-can kwargs); a clear error when it names none."""
    specs = [parse_bus_spec(spec) for spec in args.bus_url]
    extra = parse_bus_kwargs(args.bus_kwargs)
    if args.interface:
        common: dict[str, Any] = {"interface": args.interface}
        if args.bitrate is not None:
            common["bitrate"] = args.bitrate
        if args.data_bitrate is not None:
            common["data_bitrate"] = args.data_bitrate
        if args.fd:
            common["fd"] = True
        for channel in args.channel or [extra.get("channel", "can0")]:
            kwargs = {**common, "channel": channel, **{k: v for k, v in extra.items() if k != "channel"}}
            specs.append((str(channel), kwargs))
    elif args.channel or args.bitrate is not None or args.bus_kwargs:
        raise BusUrlError("-c/--channel, -b/--bitrate and --bus-kwargs need -i/--interface (or use --bus URL)")
    if not specs:
        raise BusUrlError("name a bus: -i INTERFACE -c CHANNEL [-b BITRATE], or --bus URL")
    names = [name for name, _ in specs]
    if len(set(names)) != len(names):
        raise BusUrlError(f"duplicate bus names {names}; name them with --bus NAME=URL")
    return specs
