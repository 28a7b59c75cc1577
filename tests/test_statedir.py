"""The state directory: created 0700, unsafe ones refused, loose key modes repaired."""

from __future__ import annotations

import os
import stat

import pytest

from agent.export.signing import KEY_FILE, SigningKeyError, load_or_create_key, load_private_key
from agent.service.statedir import StateDirError, prepare_state_dir


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_missing_dir_is_created_0700_even_under_a_strict_umask(tmp_path):
    state = tmp_path / "var" / "lib" / "vehicle-agent"
    old = os.umask(0o277)  # would leave mkdir's 0700 as 0500
    try:
        report = prepare_state_dir(state)
    finally:
        os.umask(old)
    assert report.created and report.repairs == []
    assert state.is_dir() and mode(state) == 0o700


def test_existing_good_dir_is_left_alone(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "buffer.db").write_bytes(b"x")
    os.chmod(state / "buffer.db", 0o644)
    report = prepare_state_dir(state)
    assert not report.created and report.repairs == []
    assert mode(state / "buffer.db") == 0o644  # not a key: not touched


@pytest.mark.parametrize("loose", [0o777, 0o1777, 0o703])
def test_world_writable_dir_is_refused_and_not_touched(tmp_path, loose):
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, loose)
    with pytest.raises(StateDirError) as caught:
        prepare_state_dir(state)
    assert str(caught.value).startswith(f"state dir {state} is world-writable (mode {loose:04o})")
    assert f"chmod 700 {state}" in str(caught.value)
    assert mode(state) == loose


def test_group_or_other_readable_dir_is_tightened_and_reported(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o755)
    report = prepare_state_dir(state)
    assert mode(state) == 0o700
    assert report.repairs == [f"{state}: mode 0755 -> 0700"]


def test_dir_of_another_user_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    with pytest.raises(StateDirError, match=rf"state dir {state} belongs to uid {os.geteuid()}, "
                                            rf"but the agent runs as uid 4321; chown it"):
        prepare_state_dir(state, euid=4321)


def test_a_file_in_place_of_the_dir_is_refused(tmp_path):
    state = tmp_path / "state"
    state.write_text("")
    with pytest.raises(StateDirError, match=rf"state dir {state}: exists but is not a directory"):
        prepare_state_dir(state)


def test_loose_keys_are_repaired_to_0600_and_the_agent_then_accepts_them(tmp_path):
    state = tmp_path / "state"
    load_or_create_key(state)  # the agent's real signing key, created 0600
    signing = state / KEY_FILE
    os.chmod(signing, 0o644)  # e.g. restored from a backup with default modes
    with pytest.raises(SigningKeyError, match="readable by others"):
        load_private_key(signing)
    (state / "pseudonym.key").write_bytes(os.urandom(32))
    os.chmod(state / "pseudonym.key", 0o640)
    (state / "fleet-client.pem").write_text("x")
    os.chmod(state / "fleet-client.pem", 0o700)
    (state / "ledger.jsonl").write_text("")
    os.chmod(state / "ledger.jsonl", 0o644)
    report = prepare_state_dir(state)
    assert report.repairs == [f"{state / 'fleet-client.pem'}: mode 0700 -> 0600",
                              f"{state / 'pseudonym.key'}: mode 0640 -> 0600",
                              f"{signing}: mode 0644 -> 0600"]
    assert mode(signing) == mode(state / "pseudonym.key") == mode(state / "fleet-client.pem") == 0o600
    assert mode(state / "ledger.jsonl") == 0o644
    load_private_key(signing)  # accepted now
    assert prepare_state_dir(state).repairs == []  # idempotent


def test_a_symlinked_key_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere.key"
    elsewhere.write_bytes(b"k")
    (state / "pseudonym.key").symlink_to(elsewhere)
    with pytest.raises(StateDirError, match=r"pseudonym.key: key file is a symbolic link"):
        prepare_state_dir(state)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_key_of_another_user_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    key = state / "pseudonym.key"
    key.write_bytes(b"k")
    os.chmod(key, 0o600)
    os.chown(key, 4321, 4321)
    with pytest.raises(StateDirError, match=rf"{key}: key file belongs to uid 4321, but the agent runs as uid 0"):
        prepare_state_dir(state)
