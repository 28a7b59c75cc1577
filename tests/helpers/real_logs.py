"""The shared real logs with the DBCs that decode them (MANIFEST.md 'Which DBC decodes which log').

Used by the payload tests and ``benchmarks/payload.py``: both need every real
log decoded at full rate, all signals, exactly as the agent would.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import can

from agent.dbc import load_dbc
from agent.decode import Decoder
from agent.model import DecodedFrame, Row


@dataclass(frozen=True)
class RealLog:
    path: str
    # bus name -> DBC paths (relative to shared/data); "*" applies to every bus.
    dbcs: dict[str, tuple[str, ...]]
    j1939_buses: tuple[str, ...] = ()


_KONA = "dbc/kona-ev-dbc/derived/"
_CSS = "dbc/css-electronics/"

REAL_LOGS: tuple[RealLog, ...] = (
    # ccan also carries P-CAN messages forwarded by the gateway (pcan.dbc comments).
    RealLog("logs/kona_ev_2019_pcan_ccan_power_on_ready.log",
            {"pcan": (_KONA + "pcan.patched_BS_BU.dbc",),
             "ccan": (_KONA + "ccan.patched_BS_BU.dbc", _KONA + "pcan.patched_BS_BU.dbc")}),
    RealLog("logs/kona_ev_2020_comp_can_heating_clock_reset.log", {"*": ("dbc/kona-ev-dbc/comp_can.dbc",)}),
    # The J1939 demo DBC names source address 0xFE: match on PGN.
    RealLog("logs/css_truck_j1939_and_canmod_gps.asc",
            {"can0": (_CSS + "CSS-Electronics-SAE-J1939-DEMO.dbc",), "can1": (_CSS + "canmod-gps.dbc",)},
            j1939_buses=("can0",)),
    RealLog("logs/css_nissan_leaf_uds_and_canmod_gps.blf",
            {"can0": (_CSS + "tp_uds_nissan.dbc",), "can1": (_CSS + "canmod-gps.dbc",)}),
    RealLog("copyleft/tesla_model3_drive_unit_bench/tesla_m3_rdu_bench_vehcan.log",
            {"*": ("dbc/model3dbc/Model3CAN.dbc",)}),
)


def decoder_for(data_dir: Path, log: RealLog) -> Decoder:
    bus_dbcs = {bus: [load_dbc(data_dir / p) for p in paths] for bus, paths in log.dbcs.items()}
    return Decoder(bus_dbcs, j1939_buses=log.j1939_buses)


def decoded_frames(data_dir: Path, log: RealLog) -> tuple[Decoder, list[tuple[can.Message, DecodedFrame]]]:
    """Every frame of the log that the DBCs decode, with the frame it came from."""
    from agent.sources.log import LogSource

    decoder = decoder_for(data_dir, log)
    pairs = []
    for bus, msg in LogSource(data_dir / log.path):
        frame = decoder.decode(msg, bus)
        if frame is not None:
            pairs.append((msg, frame))
    return decoder, pairs


def rows_of(frames: list[tuple[can.Message, DecodedFrame]], stream: str = "telemetry",
            priority: int = 1) -> Iterator[Row]:
    for _, frame in frames:
        yield Row(stream, priority, frame.timestamp, frame.bus, frame.message, frame.raw, True)
