"""The local control socket: owner-only (0600 + peer credentials), JSON lines, and the consent CLI on top."""

from __future__ import annotations

import errno
import json
import os
import pwd
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.control import CommandRegistry, ControlClient, ControlError, ControlServer, agent_reachable
from agent.control.server import control_socket_path
from agent.ledger import Ledger
from agent.privacy.commands import consent_commands
from agent.privacy.policy import ConsentPolicy
from agent.privacy.purge import consent_change_handler
from agent.privacy.store import ConsentStore

pytestmark = pytest.mark.consent


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other users may enter (0755), so only the socket's own mode protects it."""
    path = Path(tempfile.mkdtemp(prefix="ctl-"))
    path.chmod(0o755)
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


@pytest.fixture
def agent(shared_dir) -> Iterator[tuple[ConsentPolicy, ControlServer, Ledger]]:
    """A running 'agent': policy on a real store, ledger writer, control server."""
    policy = ConsentPolicy(ConsentStore.in_dir(shared_dir))
    ledger = Ledger.in_dir(shared_dir)
    policy.on_change(consent_change_handler(None, None, ledger))
    registry = CommandRegistry(consent_commands(policy))
    registry.register("status", lambda: {"consent_version": policy.version})
    server = ControlServer(control_socket_path(shared_dir), registry)
    server.start()
    yield policy, server, ledger
    server.stop()


def as_nobody(action) -> dict:
    """Run ``action()`` in a forked child that dropped to user nobody; return what it reported."""
    nobody = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            try:
                report = {"result": action()}
            except OSError as exc:
                report = {"errno": exc.errno}
            os.write(write_end, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        data = reader.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def raw_request(path: Path, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(request)
        return sock.makefile("rb").readline()


def test_socket_is_owner_only(agent):
    _, server, _ = agent
    info = server.path.lstat()
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.geteuid()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root (CI runs the suite as root)")
def test_another_user_cannot_connect(agent):
    policy, server, _ = agent
    grant = b'{"cmd":"consent.grant","args":{"category":"driving","expiry":"1y"}}\n'
    report = as_nobody(lambda: raw_request(server.path, grant).decode())
    assert report == {"errno": errno.EACCES}
    # Even with the file loosened by hand, the peer-credential check refuses the other user.
    server.path.chmod(0o666)
    report = as_nobody(lambda: raw_request(server.path, grant).decode())
    assert json.loads(report["result"]) == {"ok": False, "error": "permission denied"}
    assert policy.version == 0 and not policy.is_granted("driving")


def test_peer_credentials_are_checked(agent):
    policy, server, _ = agent
    server.allowed_uids = frozenset({os.geteuid() + 1})  # pretend we are someone else
    with pytest.raises(ControlError, match="permission denied"):
        ControlClient(server.path).call("consent.grant", category="driving", expiry="7d")
    assert policy.version == 0


def test_commands_over_the_socket(agent):
    policy, server, ledger = agent
    client = ControlClient(server.path)
    change = client.call("consent.grant", category="location", expiry="90d", level="geohash5")
    assert change["version"] == 1 and policy.level("location") == "geohash5"
    shown = client.call("consent.show")
    row = next(r for r in shown["categories"] if r["category"] == "location")
    assert row["state"] == "granted" and row["level"] == "geohash5" and row["expiry"] == "90d"
    zone = client.call("consent.zones.add", latitude=41.41, longitude=-92.88, radius_m=400, name="home")
    assert zone["id"] == "z1" and client.call("consent.zones.list") == [zone]
    assert client.call("status") == {"consent_version": 2}
    with pytest.raises(ControlError, match="cabin can never be uploaded"):
        client.call("consent.grant", category="cabin", expiry="7d")
    with pytest.raises(ControlError, match=r"unknown command 'consent\.delete'"):
        client.call("consent.delete")
    with pytest.raises(ControlError, match="bad arguments"):
        client.call("consent.revoke", categroy="location")
    assert json.loads(raw_request(server.path, b"garbage\n")) == {"ok": False, "error": "request is not JSON"}
    assert "consent.grant" in client.call("commands")
    assert [e.fields["change"] for e in ledger.entries()] == ["grant", "zone_add"]


def test_concurrent_clients(agent):
    policy, server, _ = agent
    errors = []

    def grant_many(category: str) -> None:
        try:
            for _ in range(10):
                ControlClient(server.path).call("consent.grant", category=category, expiry="7d")
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=grant_many, args=(c,)) for c in ("driving", "charging", "incident")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == [] and policy.version == 30
    assert [c.version for c in ConsentStore(policy.store.path).history()] == list(range(1, 31))


def test_stale_socket_is_replaced_and_a_second_server_refused(shared_dir):
    path = control_socket_path(shared_dir)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: an agent that died
    assert path.exists() and not agent_reachable(path)
    with ControlServer(path, {}) as server:
        assert agent_reachable(path)
        with pytest.raises(ValueError, match="another agent is already listening"):
            ControlServer(path, {}).start()
        assert server.path == path
    assert not path.exists()


def test_cli_uses_the_running_agent(agent, shared_dir, capsys):
    policy, _, ledger = agent
    assert main(["consent", "grant", "location", "--for", "7d", "--level", "city", "--state", str(shared_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("location granted at city (~10 km) until ") and "agent not running" not in out
    assert policy.is_granted("location") and policy.version == 1  # the live agent changed, no restart
    assert main(["consent", "show", "--json", "--state", str(shared_dir)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == 1
    assert main(["consent", "revoke", "location", "--state", str(shared_dir)]) == 0
    assert "location revoked (consent version 2)" in capsys.readouterr().out
    assert not policy.is_granted("location")
    assert [e.fields["change"] for e in ledger.entries()] == ["grant", "revoke"]


def test_cli_edits_the_state_when_the_agent_is_stopped(tmp_path, capsys):
    state = tmp_path / "state"
    assert main(["consent", "grant", "driving", "--for", "90d", "--purpose", "fleet maintenance",
                 "--state", str(state)]) == 0
    assert "agent not running" in capsys.readouterr().out
    assert main(["consent", "zones", "add", "--lat", "41.41", "--lon", "-92.88", "--radius", "300",
                 "--state", str(state)]) == 0
    assert main(["consent", "zones", "remove", "z1", "--state", str(state)]) == 0
    assert main(["consent", "per-drive", "on", "--state", str(state)]) == 0
    capsys.readouterr()
    assert main(["consent", "show", "--state", str(state)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["CATEGORY", "STATE", "LEVEL", "EXPIRES", "COVERS"]
    driving = next(line for line in table.splitlines() if line.startswith("driving "))
    assert driving.split()[1] == "granted"
    assert next(line for line in table.splitlines() if line.startswith("cabin ")).split()[1] == "never"
    assert "consent version 4" in table and "location off at each ignition: yes" in table
    policy = ConsentPolicy(ConsentStore.in_dir(state))
    assert policy.state.grants["driving"].purpose == "fleet maintenance"
    assert [e.fields["change"] for e in Ledger.in_dir(state).entries()] == ["grant", "zone_add", "zone_remove",
                                                                             "setting"]
    assert Ledger.in_dir(state).verify().ok
    assert main(["consent", "grant", "unclassified", "--for", "7d", "--state", str(state)]) == 2
    assert "unclassified can never be uploaded" in capsys.readouterr().err
    assert main(["consent", "zones", "remove", "z9", "--state", str(state)]) == 2
    assert "no privacy zone 'z9'" in capsys.readouterr().err
    assert main(["consent", "show"]) == 2
    assert "--state DIR or --config FILE" in capsys.readouterr().err


def test_cli_reads_state_dir_from_config(tmp_path, capsys):
    config = tmp_path / "agent.yaml"
    config.write_text("state:\n  dir: st\nconsent:\n  grantable: [driving]\n")
    assert main(["consent", "grant", "charging", "--for", "7d", "--config", str(config)]) == 2
    assert "charging is not grantable on this vehicle" in capsys.readouterr().err
    assert main(["consent", "grant", "driving", "--for", "7d", "--config", str(config)]) == 0
    assert ConsentStore.in_dir(tmp_path / "st").load().grants.keys() == {"driving"}


def test_idle_connections_are_bounded_and_the_owner_still_gets_in_after(agent):
    from agent.control.server import MAX_CONNECTIONS

    _policy, server, _ = agent
    baseline = threading.active_count()
    idle = []
    for _ in range(MAX_CONNECTIONS):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(server.path))
        idle.append(sock)
    deadline = time.monotonic() + 5
    while threading.active_count() < baseline + MAX_CONNECTIONS and time.monotonic() < deadline:
        time.sleep(0.01)
    threads_with_idle = threading.active_count()
    # One more: refused at once with a reason, no new thread.
    answer = json.loads(raw_request(server.path, b'{"cmd": "commands"}\n'))
    assert answer == {"ok": False, "error": f"busy: {MAX_CONNECTIONS} connections open"}
    assert server.busy_refusals == 1 and threading.active_count() <= threads_with_idle
    for sock in idle:
        sock.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        reply = json.loads(raw_request(server.path, b'{"cmd": "commands"}\n'))
        if reply["ok"]:
            break
        time.sleep(0.05)
    assert reply["ok"] and "consent.grant" in reply["result"]
