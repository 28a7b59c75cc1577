"""Arguments and set-up shared by the engineers' subcommands (decode, stats, replay, demo)."""

from __future__ import annotations

# Re-exported for the subcommands: loading a config's DBCs belongs to the composition root.
__all__ = ["decoder_from_config", "load_catalogs"]

import argparse
import fnmatch
from collections.abc import Callable

from agent.catalog import load_catalogs
from agent.cli.logread import open_log
from agent.config import AgentConfig, load_config
from agent.dbc import LoadedDbc, load_dbc
from agent.decode import ALL_DBCS, Decoder
from agent.flow.parts import decoder_from_config
from agent.model import SignalSpec
from agent.sources.candump_text import CandumpTextSource
from agent.sources.log import LogSource
from agent.transport_decode import wrap_for_transport


def add_dbc_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--dbc",
        nargs="+",
        action="extend",
        default=[],
        required=required,
        metavar="[BUS=]FILE",
        help="DBC files; BUS=FILE applies a DBC to one bus only (default: every bus)",
    )
    parser.add_argument("--catalog", nargs="+", action="extend", default=[], metavar="FILE",
                        help="signal catalogs (default: NAME.catalog.yaml next to each DBC, when present)")
    parser.add_argument("--bus-map", default="", metavar="CH=BUS,...",
                        help="name log channels, e.g. 0=truck,1=gps (candump names and canN work too)")
    parser.add_argument("--j1939", nargs="*", default=None, metavar="BUS",
                        help="match extended frames by J1939 PGN on these buses (no names: all buses)")


def parse_bus_map(text: str) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        if "=" not in item:
            raise ValueError(f"--bus-map: expected CHANNEL=BUS, got {item!r}")
        channel, bus = (side.strip() for side in item.split("=", 1))
        mapping[channel] = bus
    return mapping


def load_dbcs(specs: list[str]) -> dict[str, list[LoadedDbc]]:
    bus_dbcs: dict[str, list[LoadedDbc]] = {}
    for spec in specs:
        bus, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        bus_dbcs.setdefault(bus or ALL_DBCS, []).append(load_dbc(path))
    return bus_dbcs


def glob_filter(patterns: list[str] | None) -> Callable[[SignalSpec], bool] | None:
    if not patterns:
        return None

    def wanted(spec: SignalSpec) -> bool:
        return any(fnmatch.fnmatchcase(spec.key, p) or fnmatch.fnmatchcase(spec.vss_path, p) for p in patterns)

    return wanted


def decoder_from_args(args: argparse.Namespace, wanted: Callable[[SignalSpec], bool] | None = None) -> Decoder:
    bus_dbcs = load_dbcs(args.dbc)
    catalog = load_catalogs(bus_dbcs, args.catalog)
    j1939 = args.j1939
    if j1939 is not None and not j1939:
        j1939 = ["*"]
    # Messages longer than a CAN frame (UDS responses) are reassembled from ISO-TP first (agent/transport_decode).
    return wrap_for_transport(Decoder(bus_dbcs, catalog, wanted=wanted, j1939_buses=j1939 or ()), bus_dbcs)


def bus_map_from_config(config: AgentConfig) -> dict[str, str]:
    return {str(bus.log_channel if bus.log_channel is not None else bus.name): bus.name for bus in config.buses}


def log_source_from_args(args: argparse.Namespace, config: AgentConfig | None = None) -> LogSource | CandumpTextSource:
    """The command's LOG (``-``: standard input), channels named by the config's buses and ``--bus-map``."""
    bus_map = bus_map_from_config(config) if config else {}
    bus_map.update(parse_bus_map(args.bus_map))
    return open_log(args, bus_map)


def maybe_config(path: str | None) -> AgentConfig | None:
    return load_config(path) if path else None
