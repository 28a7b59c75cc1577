"""Every fault kind of the simulator on a live replay (issue 7): the agent keeps running and its counters
show each fault, exactly.

The expected counters come from running the same fault injection (same spec and seed) and the agent's own
decoder over the same log in the test; the live agent, fed over socketcand by `vehicle-sim replay --faults`,
must end with exactly those per-bus counts.  Per fault:

* drop, silence, dup, errburst: frames in = log frames - dropped - silenced + duplicated + error frames;
* errburst: error_frames; corrupt (length): wrong_length; corrupt (bits): the frame still decodes (a data
  bit flip is only caught by the CAN CRC, which a receiver never sees), so decoded/unknown_id stay exact;
* jump: the pipeline's per-bus clock_jumps (forward more than 60 s, back more than clock_reset_s);
* reorder, delay: the frame is stamped when it arrives, as on a real bus, so only the totals can show them
  (and do: every held frame is counted once).
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from agent.config import load_config
from agent.flow.parts import collection_plan, decoder_for
from agent.sources.log import LogSource
from simulator.faults import FaultInjector, parse_fault_spec
from tests.e2e_support import grant
from tests.reliability.rig import (
    BUNDLED_LOG,
    BUS_MAP,
    GRANTS,
    LOG_FRAMES,
    AgentProcess,
    Simulator,
    assert_decode_balance,
    live_config,
    wait_quiet,
)

pytestmark = pytest.mark.reliability

FAULTS = ("drop=0.01,corrupt=0.03,dup=0.01,reorder=0.01:2,delay=0.01:50ms,errburst=25@10s/40s,"
          "silence=3s@60s,jump=+3600s@80s,jump=-3600s@100s,seed=7")


def expected_counters(config_path) -> tuple[dict[str, dict[str, int]], dict[str, int], int]:
    """Per-bus decode counters, the injector's report, and per-bus frames after a timestamp step."""
    config = load_config(config_path)
    decoder = decoder_for(config, collection_plan(config))
    injector = FaultInjector(parse_fault_spec(FAULTS))
    newest: dict[str, float] = {}
    jumps: Counter[str] = Counter()
    for bus, msg in injector.apply(LogSource(BUNDLED_LOG, bus_map=BUS_MAP, strict=False)):
        decoder.decode(msg, bus)
        previous = newest.get(bus)
        if previous is not None and (msg.timestamp - previous > 60 or previous - msg.timestamp > 1.0):
            jumps[bus] += 1
        newest[bus] = msg.timestamp if previous is None or abs(msg.timestamp - previous) > 1.0 \
            else max(previous, msg.timestamp)
    per_bus = {bus: counters.as_dict() for bus, counters in decoder.counters.items()}
    return per_bus, injector.report.as_dict(), dict(jumps)


def test_every_simulator_fault_shows_in_the_agents_counters(tmp_path, logbook):
    grant(tmp_path / "state", GRANTS)  # the faulted frames go all the way into batches
    sim = Simulator(logbook, speed="16", loop=1, faults=FAULTS, name="faults-sim")
    config = live_config(tmp_path, sim.port)
    expected, injected, expected_jumps = expected_counters(config)
    agent = AgentProcess(config, logbook, name="faults")
    started = time.monotonic()
    try:
        agent.wait_ready()
        midway = agent.wait_status(lambda s: s["pipeline"]["decode"].get("gps", {}).get("error_frames", 0) > 0,
                                   timeout=60)
        sent = sim.wait(timeout=60)
        wait_quiet(agent, quiet_s=1.0, timeout=30)
        assert agent.alive
        report = agent.stop()
    finally:
        sim.kill()
        if agent.alive:
            agent.kill()
    pipeline = report["pipeline"]
    got = pipeline["decode"]
    print(f"\nbus faults in {time.monotonic() - started:.0f} s: injected {({k: v for k, v in injected.items() if v})}; "
          f"simulator sent {sent.total}; agent frames in {pipeline['frames_in']}, per bus {got}, clock jumps "
          f"{pipeline['clock_jumps']}, batches written {pipeline['batches_written']}; status answered mid-run "
          f"at {midway['pipeline']['frames_in']} frames")
    # The injection did inject every kind.
    for kind in ("dropped", "corrupted_bits", "corrupted_length", "duplicated", "reordered", "delayed",
                 "error_frames", "silenced", "clock_jumps"):
        assert injected[kind] > 0, kind
    frames_out = sum(LOG_FRAMES.values()) - injected["dropped"] - injected["silenced"] + injected["duplicated"] \
        + injected["error_frames"]
    assert injected["frames_out"] == frames_out == sent.total == pipeline["frames_in"]
    assert not report["dropped_at_bus"]
    assert pipeline["batches_written"] > 0 and pipeline["store_errors"] == 0
    # Every per-bus counter is exactly what the agent's decoder makes of the faulted stream.
    assert got == expected
    assert_decode_balance(pipeline)
    assert sum(c["error_frames"] for c in got.values()) == injected["error_frames"]
    assert sum(c["wrong_length"] for c in got.values()) > 0
    # Both clock steps show on both buses (a frame held back across a step shows as two more: it went out
    # stamped with the clock from before the step).
    assert pipeline["clock_jumps"] == expected_jumps
    assert all(expected_jumps[bus] >= injected["clock_jumps"] for bus in LOG_FRAMES)
