"""Which shared DBC decodes which shared real log (from ../shared/data/MANIFEST.md)."""

from __future__ import annotations

# (log, [dbc, ...]) relative to shared/data.  DBCs apply to every channel of the log.
REAL_PAIRS = [
    ("logs/kona_ev_2019_pcan_ccan_power_on_ready.log", ["dbc/kona-ev-dbc/derived/pcan.patched_BS_BU.dbc"]),
    ("logs/kona_ev_2020_comp_can_heating_clock_reset.log", ["dbc/kona-ev-dbc/comp_can.dbc"]),
    ("logs/css_truck_j1939_and_canmod_gps.asc",
     ["dbc/css-electronics/CSS-Electronics-SAE-J1939-DEMO.dbc", "dbc/css-electronics/canmod-gps.dbc"]),
    ("logs/css_nissan_leaf_uds_and_canmod_gps.blf", ["dbc/css-electronics/canmod-gps.dbc"]),
    ("copyleft/tesla_model3_drive_unit_bench/tesla_m3_rdu_bench_vehcan.log", ["dbc/model3dbc/Model3CAN.dbc"]),
]

LARGEST_LOG = "logs/css_truck_j1939_and_canmod_gps.asc"
