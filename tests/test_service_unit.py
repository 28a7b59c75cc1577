"""config/vehicle-agent.service: the directives the design asks for, and systemd's own verdict on the file."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.systemd_unit import UNIT, directives, unit_environment

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(SYSTEMD_ANALYZE is None,
                                   reason="systemd-analyze not installed (Debian: apt-get install systemd)")


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return directives(UNIT.read_text())


def one(unit, section: str, key: str) -> str:
    values = unit[section].get(key)
    assert values is not None, f"[{section}] {key}= missing"
    assert len(values) == 1, f"[{section}] {key}= given {len(values)} times"
    return values[0]


def test_notify_type_watchdog_and_restart_policy(unit):
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    assert one(unit, "Service", "WatchdogSec") == "30s"
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Service", "RestartPreventExitStatus") == "2"  # the CLI's exit status for a bad config
    assert one(unit, "Unit", "StartLimitBurst") == "5"
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_runs_the_agent_as_its_own_user_with_the_config_in_etc(unit):
    argv = shlex.split(one(unit, "Service", "ExecStart"))
    assert argv == ["/opt/vehicle-agent/bin/vehicle-agent", "run", "--config", "/etc/vehicle-agent/agent.yaml"]
    assert one(unit, "Service", "User") == one(unit, "Service", "Group") == "vehicle-agent"
    assert one(unit, "Service", "ConfigurationDirectory") == "vehicle-agent"  # /etc/vehicle-agent


def test_state_is_the_only_writable_path(unit):
    assert one(unit, "Service", "StateDirectory") == "vehicle-agent"
    assert one(unit, "Service", "StateDirectoryMode") == "0700"
    assert one(unit, "Service", "ProtectSystem") == "strict"
    assert one(unit, "Service", "ReadWritePaths") == "/var/lib/vehicle-agent"
    assert one(unit, "Service", "ProtectHome") == "yes"
    assert one(unit, "Service", "PrivateTmp") == "yes"
    assert one(unit, "Service", "UMask") == "0077"


def test_no_privileges_and_only_the_socket_families_the_agent_uses(unit):
    assert one(unit, "Service", "NoNewPrivileges") == "yes"
    assert one(unit, "Service", "CapabilityBoundingSet") == ""  # no capability at all
    assert one(unit, "Service", "AmbientCapabilities") == ""
    assert one(unit, "Service", "RestrictAddressFamilies").split() == ["AF_UNIX", "AF_INET", "AF_INET6", "AF_CAN",
                                                                     "AF_NETLINK"]
    assert unit["Service"]["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    for key in ("PrivateDevices", "ProtectKernelModules", "ProtectKernelTunables", "ProtectControlGroups",
                "RestrictNamespaces", "MemoryDenyWriteExecute", "LockPersonality", "RestrictSUIDSGID"):
        assert one(unit, "Service", key) == "yes", key
    assert "PrivateNetwork" not in unit["Service"]  # would hide the CAN interfaces and the broker


def test_exec_start_is_a_real_agent_subcommand(unit):
    from agent.cli.main import build_parser

    parser = build_parser()
    argv = shlex.split(one(unit, "Service", "ExecStart"))[1:]
    args = parser.parse_args(argv)
    assert args.command == "run" and str(args.config) == "/etc/vehicle-agent/agent.yaml"


def verify(unit_text: str, directory: Path) -> subprocess.CompletedProcess:
    """``systemd-analyze verify`` on a copy whose ExecStart points at an executable that exists here
    (verify fails on a missing binary, and the agent is not installed under /opt on a build machine)."""
    stand_in = directory / "vehicle-agent"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    path = directory / "vehicle-agent.service"
    path.write_text(unit_text.replace("/opt/vehicle-agent/bin/vehicle-agent", str(stand_in)))
    assert str(stand_in) in path.read_text()
    return subprocess.run([SYSTEMD_ANALYZE, "verify", str(path)], capture_output=True, text=True, timeout=60)


@needs_systemd
def test_systemd_analyze_verify_passes(tmp_path):
    result = verify(UNIT.read_text(), tmp_path)
    # verify exits 0 even for directives it ignores with a warning: any output is a failure.
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@needs_systemd
def test_verify_would_catch_a_broken_unit(tmp_path):
    broken = UNIT.read_text().replace("Type=notify", "Type=notfy").replace("WatchdogSec=30s", "WatchdogSec=half")
    result = verify(broken, tmp_path)
    assert "Failed to parse service type, ignoring: notfy" in result.stderr
    assert "Failed to parse sec value, ignoring: half" in result.stderr


@needs_systemd
def test_hardening_exposure_is_low(tmp_path):
    verify(UNIT.read_text(), tmp_path)  # writes the runnable copy
    result = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", "--threshold=20", "--no-pager",
                             str(tmp_path / "vehicle-agent.service")], capture_output=True, text=True, timeout=60)
    summary = [line for line in result.stdout.splitlines() if "Overall exposure level" in line]
    assert result.returncode == 0 and summary, result.stdout + result.stderr
    score = float(summary[0].split(":")[1].split()[0])
    assert score <= 2.0, summary[0]  # systemd rates up to 2.0 as "OK"; a unit without hardening scores 9.6


# -- what the restart policy relies on: exit statuses, and priorities in the journal ----------------------------


def test_exit_statuses_separate_configuration_errors_from_temporary_failures():
    import errno
    import sqlite3

    from agent.service.exitcodes import EXIT_CONFIG, EXIT_SOFTWARE, EXIT_TEMPFAIL, exit_code_for
    from agent.service.statedir import StateDirError
    from agent.yamlsrc import ConfigError

    config = [ConfigError("agent.yaml:3: buses[0].bitrate: expected an integer"), StateDirError("world-writable"),
              FileNotFoundError(errno.ENOENT, "no such file"), PermissionError(errno.EACCES, "denied"), OSError("x")]
    temporary = [OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EIO, "I/O error"),
                 ConnectionRefusedError(errno.ECONNREFUSED, "refused"), TimeoutError("timed out"),
                 sqlite3.OperationalError("database is locked")]
    assert [exit_code_for(exc) for exc in config] == [EXIT_CONFIG] * len(config)
    assert [exit_code_for(exc) for exc in temporary] == [EXIT_TEMPFAIL] * len(temporary)
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise ValueError("cannot write the ledger") from exc
    except ValueError as wrapped:
        assert exit_code_for(wrapped) == EXIT_TEMPFAIL  # the cause decides
    assert exit_code_for(RuntimeError("a bug")) == EXIT_SOFTWARE
    assert (EXIT_CONFIG, EXIT_TEMPFAIL) == (2, 75)


def test_the_unit_restarts_everything_but_a_configuration_error(unit):
    assert unit["Service"]["RestartPreventExitStatus"] == ["2"]  # 75 (temporary) and 1 (a bug) are restarted
    assert "RestartForceExitStatus" not in unit["Service"] and "SuccessExitStatus" not in unit["Service"]


def test_exit_statuses_are_documented_in_help_and_deploy_guide(capsys):
    from agent.cli.main import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = capsys.readouterr().out
    for line in ("exit status:", "  2    configuration error", "  75   temporary failure", "waiting: REASON"):
        assert line in text, line
    deploy = (UNIT.parents[1] / "docs" / "deploy.md").read_text()
    assert "| 75 |" in deploy and "| 2 |" in deploy and "RestartPreventExitStatus=2" in deploy


def test_journal_lines_carry_their_priority_on_every_line(tmp_path):
    import io
    import logging
    import os
    import sys

    from agent.service.journal import JournalFormatter, stderr_is_journal, syslog_priority

    assert [syslog_priority(level) for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO,
                                                 logging.DEBUG)] == [2, 3, 4, 6, 7]
    try:
        raise ValueError("inner")
    except ValueError:
        record = logging.LogRecord("agent.x", logging.ERROR, __file__, 1, "two\nlines", None, sys.exc_info())
    text = JournalFormatter().format(record)
    lines = text.splitlines()
    assert lines[0] == "<3>ERROR agent.x: two" and lines[1] == "<3>lines"
    assert "<3>Traceback (most recent call last):" in lines and lines[-1] == "<3>ValueError: inner"
    assert all(line.startswith("<3>") for line in lines)
    # Only when JOURNAL_STREAM names this very stream (systemd's check), never for a redirected one.
    with open(tmp_path / "stderr", "w") as stream:
        info = os.fstat(stream.fileno())
        assert stderr_is_journal(stream, {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
        assert not stderr_is_journal(stream, {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino + 1}"})
        assert not stderr_is_journal(stream, {})
        assert not stderr_is_journal(stream, {"JOURNAL_STREAM": "garbage"})
    assert not stderr_is_journal(io.StringIO(), {"JOURNAL_STREAM": "1:1"})


def test_one_malloc_arena_keeps_the_service_memory_flat(unit):
    """benchmarks/soak.py runs the agent with this environment: the unit is what the RSS figures are of."""
    environment = unit_environment(unit)
    assert environment["MALLOC_ARENA_MAX"] == "1"
    assert environment["PYTHONUNBUFFERED"] == "1"
