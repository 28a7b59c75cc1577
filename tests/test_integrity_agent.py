"""The shipped Kona P-CAN catalog's transport signals, checked by the agent's own wiring on the real log."""

from __future__ import annotations

import pytest

from agent.catalog import load_catalogs
from agent.dbc import load_dbc
from agent.decode import Decoder
from agent.flow.parts import integrity_checker
from agent.sources.log import LogSource

pytestmark = pytest.mark.integrity

KONA_2019 = "logs/kona_ev_2019_pcan_ccan_power_on_ready.log"


def test_real_kona_log_checksums_all_pass_and_counters_step(repo_root, shared_data):
    bus_dbcs = {"pcan": [load_dbc(repo_root / "dbc/kona-ev/pcan.dbc")]}
    decoder = Decoder(bus_dbcs, load_catalogs(bus_dbcs, []))
    roles = {spec.key: spec.role for spec in decoder.specs.values() if spec.role != "data"}
    assert roles["Steering.Checksum"] == "checksum" and roles["SCU_10C.Counter"] == "counter"
    assert len(roles) == 24
    checker = integrity_checker(decoder)
    for bus, msg in LogSource(shared_data / KONA_2019):
        if bus == "pcan":
            checker.on_raw(bus, msg)
    total = checker.total()
    # Every checksum whose algorithm is known computes right on the real car's frames.
    assert total["checksum_failures"] == 0 and total["checksum_ok"] == 5539
    assert total["checksum_not_checked"] == 679  # StabilityControl: no known algorithm, never a failure
    # Three real counter jumps (the VCU's three 4-valued counters skip once each at power-on).
    assert total["counter_jumps"] == 3 and total["counter_ok"] == 9023
    per_message = checker.snapshot()["pcan"]
    assert {name for name, c in per_message.items() if c["counter_jumps"]} == {"VCU_109", "VCU_200", "VCU_201"}
    assert per_message["FATC_5F5"]["short"] == 65  # a 64-byte DBC message on a classic bus: not checked


def test_transport_signals_are_decoded_only_when_a_rule_wants_them(repo_root):
    from agent.collect import CollectionPlan

    bus_dbcs = {"pcan": [load_dbc(repo_root / "dbc/kona-ev/pcan.dbc")]}
    decoder = Decoder(bus_dbcs, load_catalogs(bus_dbcs, []))
    plan = CollectionPlan()
    kept = {spec.key for spec in decoder.specs.values() if plan.wants(spec)}
    assert "Steering.Checksum" not in kept and "VCU_109.Counter" not in kept
    assert "Steering.SteeringAngle" in kept or any(k.startswith("Steering.") for k in kept)


def test_stats_shows_transport_checks_and_isotp_transfers(repo_root, shared_data, capsys):
    from agent.cli.main import main

    assert main(["stats", str(shared_data / KONA_2019), "--dbc", f"pcan={repo_root / 'dbc/kona-ev/pcan.dbc'}"]) == 0
    out = capsys.readouterr().out
    assert ("bus pcan transport signals: 9038 frames checked, 3 counter jumps, 0 checksum failures "
            "(5539 ok, 679 not checked)") in out
    leaf = shared_data / "logs/css_nissan_leaf_uds_and_canmod_gps.blf"
    dbc = shared_data / "dbc/css-electronics/tp_uds_nissan.dbc"
    assert main(["stats", str(leaf), "--dbc", f"can0={dbc}"]) == 0
    assert "bus can0 ISO-TP: 26 transfers, 26 decoded, 0 negative answers, 0 not decodable" in capsys.readouterr().out


def test_a_reload_keeps_the_transport_counts_of_the_running_agent(repo_root, shared_data, tmp_path):
    from agent.runtime import AgentRuntime
    from agent.sources.live import LiveSource

    config = tmp_path / "agent.yaml"
    config.write_text(f"""\
vehicle: {{id: integrity-reload}}
state: {{dir: {tmp_path / 'state'}}}
owner_page: {{enabled: false}}
buses:
  - {{name: pcan, interface: virtual, channel: integrity-reload, dbc: [{repo_root / 'dbc/kona-ev/pcan.dbc'}]}}
""")
    frames = [(bus, msg) for bus, msg in LogSource(shared_data / KONA_2019) if bus == "pcan"]
    agent = AgentRuntime(config, source=LiveSource({}))
    try:
        half = len(frames) // 2
        for bus, msg in frames[:half]:
            agent.pipeline.feed(bus, msg)
        agent._reload()
        assert agent.reloads == {"ok": 1, "rejected": 0, "last_error": None}
        for bus, msg in frames[half:]:
            agent.pipeline.feed(bus, msg)
        per_message = agent.status()["integrity"]["pcan"]
    finally:
        agent.store.close()
    # The whole log's figures (test above), not those of its second half, and no resync at the reload.
    assert sum(c["frames"] for c in per_message.values()) == 9038 + 65
    assert sum(c["counter_jumps"] for c in per_message.values()) == 3
    assert sum(c["counter_ok"] for c in per_message.values()) == 9023
    assert sum(c["checksum_ok"] for c in per_message.values()) == 5539
