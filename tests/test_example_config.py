"""config/agent.yaml, the commented example, is valid in every section and fits its DBCs."""

from __future__ import annotations

from agent.camera.config import camera_config
from agent.cli.common import decoder_from_config
from agent.collect import Collector, parse_collection
from agent.config import load_config
from agent.incident.config import incident_config
from agent.privacy import consent_config
from agent.uplink.config import uplink_config


def test_example_config_parses_in_every_section(repo_root):
    config = load_config(repo_root / "config" / "agent.yaml")
    assert [bus.name for bus in config.buses] == ["truck", "gps"]
    assert config.buffer.never_evict == ["incident"] and config.buffer.synchronous == "FULL"
    plan = parse_collection(config)
    assert [c.name for c in plan.campaigns] == ["basic", "hard_brake"]
    assert plan.campaigns[1].trigger is not None and plan.campaigns[1].trigger.pre_s == 5.0
    uplink = uplink_config(config)
    assert uplink.region == "cn-north" and uplink.tls is not None and not uplink.allow_plaintext_loopback
    assert consent_config(config).profile == "china"
    assert [t.name for t in incident_config(config).triggers] == ["speed_drop", "hard_decel"]
    assert camera_config(config).enabled
    # Every rule and trigger names signals the configured DBCs really have.
    decoder = decoder_from_config(config, wanted=plan.wants)
    collector = Collector(plan, decoder.specs, sink=type("Sink", (), {"put": lambda self, row: None})())
    assert collector.warnings == []
