"""Hostile configuration (issue 11): alias bombs, recursive aliases, non-finite numbers and oversized DBCs are
refused with ``file:line`` and bounded memory, at start (exit 2) and at a reload of the running agent (which
keeps running on its old configuration, counts the rejection and loses nothing).
"""

from __future__ import annotations

import re
import time

import pytest

from agent.config import load_config
from agent.dbc import MAX_DBC_BYTES, MAX_DBC_MESSAGES, DbcError, load_dbc
from agent.service.exitcodes import EXIT_CONFIG
from agent.yamlsrc import ConfigError
from tests.e2e_support import grant, run_agent
from tests.reliability.rig import GRANTS, AgentProcess, Simulator, assert_store_balance, live_config, wait_quiet
from tests.test_config_limits import BILLION_LAUGHS, peak_bytes, synthetic_dbc

pytestmark = pytest.mark.reliability

MEMORY_BOUND = 50 * 1024 * 1024


def hostile_variants(good: str) -> dict[str, tuple[str, str]]:
    """name -> (config text, what the rejection must say after ``agent.yaml:LINE: ``)."""
    lines = good.splitlines()
    bomb_line = len(lines) + 4  # the line of `d:`, where the expansions pass the budget
    vehicle = next(i for i, line in enumerate(lines) if line.startswith("vehicle:"))
    recursive = list(lines)
    recursive[vehicle] = recursive[vehicle].replace("vehicle: {", "vehicle: &v {loop: *v, ")
    assert recursive != lines and "batching: {max_age_s: 1.0}" in good
    return {
        "alias bomb": (good + BILLION_LAUGHS, rf":{bomb_line}: d\[0\]: alias \*c: more than 100 alias expansions"),
        "recursive alias": ("\n".join(recursive) + "\n",
                            rf":{vehicle + 1}: vehicle\.loop: alias \*v refers to a node that contains it"),
        "nan": (good.replace("max_age_s: 1.0", "max_age_s: .nan"),
                r":\d+: batching\.max_age_s: must be a finite number between 0\.01 and 86400, got nan"),
    }


@pytest.mark.parametrize("name", ["alias bomb", "recursive alias", "nan"])
def test_a_hostile_config_is_refused_with_file_line_in_bounded_memory(tmp_path, name):
    good = live_config(tmp_path, 1).read_text()
    text, expected = hostile_variants(good)[name]
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    started = time.perf_counter()
    peak, error = peak_bytes(lambda: load_config(path))
    elapsed = time.perf_counter() - started
    assert isinstance(error, ConfigError), repr(error)
    assert re.match(re.escape(str(path)) + expected, str(error)), str(error)
    assert peak < MEMORY_BOUND, f"{name}: peak {peak / 1e6:.1f} MB"
    assert elapsed < 5, elapsed
    print(f"{name}: refused in {elapsed * 1000:.0f} ms, peak {peak / 1e6:.2f} MB: {error}")


@pytest.mark.parametrize("name", ["alias bomb", "recursive alias", "nan"])
def test_vehicle_agent_run_with_a_hostile_config_exits_2_naming_file_and_line(tmp_path, name):
    text, expected = hostile_variants(live_config(tmp_path, 1).read_text())[name]
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    result = run_agent("run", "--config", str(path), timeout=60)
    assert result.returncode == EXIT_CONFIG, (result.returncode, result.stderr)
    assert re.search(re.escape(str(path)) + expected, result.stderr), result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) <= 3, result.stderr


def test_a_7mb_dbc_of_20000_messages_is_refused_naming_the_limit(tmp_path):
    big = tmp_path / "huge.dbc"
    big.write_text(synthetic_dbc(20_000, signals=6))  # about 7.5 MB
    assert big.stat().st_size > 7_000_000
    peak, error = peak_bytes(lambda: load_dbc(big))
    assert isinstance(error, DbcError), repr(error)
    assert str(error) == f"{big}: DBC larger than the limit of {MAX_DBC_BYTES} bytes (4 MiB); refused unparsed"
    assert peak < 2 * MAX_DBC_BYTES + 1_000_000, peak  # read up to the limit, never parsed
    # Under the size limit but past the message limit (the same messages, one signal each, short names).
    many = tmp_path / "many.dbc"
    many.write_text(synthetic_dbc(MAX_DBC_MESSAGES + 1))
    assert many.stat().st_size < MAX_DBC_BYTES
    with pytest.raises(DbcError, match=rf"^{re.escape(str(many))}:\d+: DBC has more than the limit of 5000 messages"):
        load_dbc(many)
    # And the agent refuses to start on it: a configuration error.
    config = live_config(tmp_path, 1)
    config.write_text(re.sub(r'dbc: \["[^"]+canmod-gps\.dbc"\]', f'dbc: ["{big}"]', config.read_text()))
    assert str(big) in config.read_text()
    result = run_agent("run", "--config", str(config), timeout=60)
    assert result.returncode == EXIT_CONFIG and "DBC larger than the limit of 4194304 bytes" in result.stderr, \
        result.stderr


def test_a_running_agent_rejects_hostile_reloads_and_keeps_every_frame(tmp_path, logbook):
    grant(tmp_path / "state", GRANTS)  # the frames go all the way into batches
    sim = Simulator(logbook, speed="3", loop=1, name="hostile-reload-sim")
    config = live_config(tmp_path, sim.port)
    good = config.read_text()
    agent = AgentProcess(config, logbook, name="hostile-reload")
    rejected: list[str] = []
    try:
        agent.wait_ready()
        status = agent.wait_status(lambda s: s["buffer"]["counters"].get("written", 0) > 0, timeout=60)
        rss_before = status["resources"]["rss_bytes"]
        for name, (text, expected) in hostile_variants(good).items():
            frames, written = status["pipeline"]["frames_in"], status["buffer"]["counters"].get("written", 0)
            config.write_text(text)
            result = run_agent("reload", "--state", str(agent.state_dir), timeout=30)
            assert result.returncode == 0, result.stderr
            count = len(rejected) + 1
            status = agent.wait_status(lambda s, n=count: s["reloads"]["rejected"] == n, timeout=30)
            reason = status["reloads"]["last_error"]
            assert re.search(re.escape(str(config)) + expected, reason), (name, reason)
            assert status["reloads"]["ok"] == 0
            rejected.append(reason)
            # Still running on the old configuration: frames keep arriving and batches keep being written.
            status = agent.wait_status(lambda s, f=frames, w=written: s["pipeline"]["frames_in"] > f
                                       and s["buffer"]["counters"].get("written", 0) > w, timeout=30)
            assert status["resources"]["rss_bytes"] < rss_before + MEMORY_BOUND, (name, status["resources"])
        config.write_text(good)  # and a good file is taken again
        assert run_agent("reload", "--state", str(agent.state_dir), timeout=30).returncode == 0
        agent.wait_status(lambda s: s["reloads"]["ok"] == 1, timeout=30)
        sent = sim.wait(timeout=120)
        wait_quiet(agent, quiet_s=1.5, timeout=60)
        assert agent.alive, agent.log()
        report = agent.stop()
    finally:
        sim.kill()
        if agent.alive:
            agent.kill()
    log = agent.log_path.read_text()
    for reason in rejected:  # one line per rejection, with the exception's type, and no traceback
        assert f"reload rejected, keeping the running configuration: ConfigError: {reason.split(': ', 1)[1]}" \
            in log, reason
    assert "Traceback" not in log and "RecursionError" not in log
    # Nothing accepted was lost: every frame sent was taken, and every batch written is still in the buffer.
    pipeline = report["pipeline"]
    assert pipeline["frames_in"] + sum(report["dropped_at_bus"].values()) == sent.total, (pipeline, sent.text)
    assert sum(report["dropped_at_bus"].values()) == 0
    counters = report["buffer"]["counters"]
    assert_store_balance(counters)
    assert counters["written"] == pipeline["batches_written"] > 0 and counters["pending_batches"] == counters["written"]
