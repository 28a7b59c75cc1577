"""A reload carries the agent's counters and its trigger states: no counter falls back to zero, and a
condition already true does not start a second incident because the configuration was re-read."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli.common import bus_map_from_config
from agent.runtime import AgentRuntime
from agent.sources.live import LiveSource
from agent.sources.log import LogSource
from tests.helpers.agent_config import write_agent_config

DEMO_LOG = Path(__file__).resolve().parents[1] / "simulator" / "data" / "css_truck_j1939_and_canmod_gps.asc.gz"
# The trip distance passes 1 km early in the bundled log and stays past it: a condition that stays true.
INCIDENT = """\
incidents:
  pre_s: 0.2
  post_s: 0.2
  triggers:
    - {name: trip1, when: "gnss_odo.DistanceTrip >= 1"}
"""


def _frames(runtime: AgentRuntime) -> list:
    return list(LogSource(str(DEMO_LOG), bus_map=bus_map_from_config(runtime.config)))


@pytest.fixture
def runtime(tmp_path):
    config = write_agent_config(tmp_path, buses="virtual", extra=INCIDENT)
    agent = AgentRuntime(config, source=LiveSource({}))
    yield agent
    agent.store.close()


def test_snapshot_count_and_trigger_state_survive_a_reload(runtime):
    frames = _frames(runtime)
    half = len(frames) // 2
    for bus, msg in frames[:half]:
        runtime.pipeline.feed(bus, msg)
    runtime.pipeline.flush()
    runtime.sidecars.flush()
    runtime.sidecars.poll(frames[half][1].timestamp + 60)
    before = runtime.status()
    assert before["sidecars"]["snapshots"] == 1
    frames_in = before["pipeline"]["frames_in"]
    assert frames_in == half

    runtime._reload()
    assert runtime.reloads["ok"] == 1
    assert runtime.status()["sidecars"]["snapshots"] == 1  # not back to zero
    for bus, msg in frames[half:]:
        runtime.pipeline.feed(bus, msg)
    runtime.pipeline.flush()
    runtime.sidecars.flush()
    runtime.sidecars.poll(frames[-1][1].timestamp + 60)
    after = runtime.status()
    # One incident over the whole log, reload or not; the counters count the agent's whole life.
    assert after["sidecars"]["snapshots"] == 1
    assert after["pipeline"]["frames_in"] == len(frames)
    condition = dict(runtime.sidecars.recorder.conditions)["trip1"]
    assert condition.fired == 1
    assert len(runtime.sidecars.incidents.list()) == 1  # no second incident saved after the reload
