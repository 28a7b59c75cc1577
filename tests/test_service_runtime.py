"""`vehicle-agent run` as a service: sd_notify, status, SIGUSR1, reload (good and bad), clean stop, no loss."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

from agent.batch import decode_batch, iter_samples
from agent.buffer.store import BatchStore
from agent.cli.common import load_catalogs, load_dbcs
from agent.decode import Decoder
from agent.sources.log import LogSource
from simulator.socketcand_server import SocketcandServer
from tests.e2e_support import GPS_DBC, REPO, TRUCK_LOG, agent_command, grant, run_agent, wait_until
from tests.helpers.agent_config import write_agent_config


def gps_frames(shared_data, count):
    frames = []
    for bus, msg in LogSource(shared_data / TRUCK_LOG):
        if bus == "can1":
            frames.append(msg)
            if len(frames) == count:
                return frames
    return frames


def config_text(tmp_path, port, max_age):
    return write_agent_config(tmp_path, buses="socketcand", sim_port=port, batch_age=max_age, only=("gps",),
                              vehicle="{id: service-test}", log_channels=False, name=".config-text.yaml").read_text()


def expected_driving_samples(frames):
    """Independent count: every driving signal of every frame sent (catalog categories, cantools decode)."""
    bus_dbcs = load_dbcs([str(GPS_DBC)])
    decoder = Decoder(bus_dbcs, load_catalogs(bus_dbcs, []))
    total = 0
    for msg in frames:
        frame = decoder.decode(msg, "gps")
        if frame is not None:
            total += sum(1 for name in frame.raw if decoder.specs[f"{frame.message}.{name}"].category == "driving")
    return total


def test_service_lifecycle(tmp_path, shared_data):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(0.2)
    server = SocketcandServer(port=0).start()
    config = tmp_path / "agent.yaml"
    config.write_text(config_text(tmp_path, server.port, 2.0))
    grant(tmp_path / "state", {"driving": None})
    log_path = tmp_path / "agent.log"
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "2000000",
           "WATCHDOG_PID": ""}
    with open(log_path, "w") as log_file:
        agent = subprocess.Popen(agent_command("-v", "run", "--config", str(config)), cwd=REPO, env=env,
                                 stdout=subprocess.PIPE, stderr=log_file, text=True)
    messages: list[str] = []

    def drain_notify():
        while True:
            try:
                messages.append(notify.recv(4096).decode())
            except OSError:
                return

    try:
        assert wait_until(lambda: (drain_notify(), any("READY=1" in m for m in messages))[1], timeout=30), \
            log_path.read_text()
        assert server.wait_for_clients(1, timeout=10)
        frames = gps_frames(shared_data, 3000)
        for msg in frames[:1500]:
            server.send(msg, channel="gps")
        server.flush(10)

        def status():
            # --state, not --config: the config file may be broken on purpose.
            result = run_agent("status", "--json", "--state", str(tmp_path / "state"))
            assert result.returncode == 0, result.stderr
            return json.loads(result.stdout)

        assert wait_until(lambda: status()["pipeline"]["frames_in"] == 1500, timeout=20)
        assert wait_until(lambda: "gps" in status()["frames_per_s"], timeout=5)  # measured once a second
        first = status()
        assert first["pipeline"]["decode"]["gps"]["frames"] == 1500
        assert "gps" in first["frames_per_s"] and first["consent"]["granted"] == ["driving"]
        assert first["uplink"] == {"state": "not configured"}

        # SIGUSR1: the status, as one line of JSON, in the log (stderr).
        agent.send_signal(signal.SIGUSR1)

        def dumps():
            return [line for line in log_path.read_text().splitlines() if " status: {" in line]

        assert wait_until(lambda: len(dumps()) == 1, timeout=10)
        dumped = json.loads(dumps()[0].split(" status: ", 1)[1])
        assert dumped["pipeline"]["frames_in"] == 1500
        assert dumped["buses"] == {"gps": {"state": "open", "opens": 1, "lost": 0}}

        # A broken config is rejected, logged, and the running one kept.
        good = config.read_text()
        config.write_text(good + "buses: [oops\n")
        agent.send_signal(signal.SIGHUP)
        assert wait_until(lambda: status()["reloads"]["rejected"] == 1, timeout=10)
        assert "reload rejected" in log_path.read_text()
        # A good config is taken (vehicle-agent reload = SIGHUP), without losing a sample.
        config.write_text(config_text(tmp_path, server.port, 1.0))
        assert run_agent("reload", "--config", str(config)).returncode == 0
        assert wait_until(lambda: status()["reloads"]["ok"] == 1, timeout=10)
        for msg in frames[1500:]:
            server.send(msg, channel="gps")
        server.flush(10)
        assert wait_until(lambda: status()["pipeline"]["frames_in"] == 3000, timeout=20)
        time.sleep(1.5)  # a couple of housekeeping turns: watchdog pings
        drain_notify()
        agent.send_signal(signal.SIGTERM)
        out, _ = agent.communicate(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
        server.stop()
    drain_notify()
    notify.close()
    assert agent.returncode == 0, log_path.read_text()
    final = json.loads(out.strip().splitlines()[-1])
    assert final["pipeline"]["frames_in"] == 3000
    assert any("WATCHDOG=1" in m for m in messages) and any("STATUS=frames" in m for m in messages)
    assert "STOPPING=1" in messages[-1] or any("STOPPING=1" in m for m in messages)
    # No sample lost across the reload: the buffer holds every driving sample of every frame sent.
    with BatchStore(tmp_path / "state" / "buffer.sqlite", read_only=True) as store:
        samples = sum(1 for batch in store.pending(10000) for _ in iter_samples(decode_batch(batch.payload)))
    assert samples == expected_driving_samples(frames) > 10000


def test_the_service_refuses_bench_mode(tmp_path):
    config = tmp_path / "agent.yaml"
    config.write_text(config_text(tmp_path, 1, 2.0))
    result = run_agent("run", "--config", str(config), "--grant-all")
    assert result.returncode == 2 and "refuses" in result.stderr


def test_status_without_a_running_agent_says_so(tmp_path):
    config = tmp_path / "agent.yaml"
    config.write_text(config_text(tmp_path, 1, 2.0))
    result = run_agent("status", "--config", str(config))
    assert result.returncode == 2 and "not running" in result.stderr
