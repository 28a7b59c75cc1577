"""The live phases' two ends for benchmarks/soak.py: the paced socketcand server (its own process) that feeds
the agent, and the broker subscriber that sees what the agent committed and delivered, and when.

Run by soak.py as ``python benchmarks/soak_live.py MODE --rate R --seconds S`` (the server prints its port,
then, after sending, a JSON line of what it sent).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import threading
import time

from common import REPO_ROOT  # noqa: F401  (puts the repo on sys.path)

from tests.reliability.rig import BUNDLED_LOG

LOG_BUSES = {"can0": "truck", "can1": "gps"}  # the log's channels -> the agent's bus names (= socketcand channels)


# --- the paced server (its own process) -----------------------------------------------------------------------

def serve_paced(mode: str, rate: float, seconds: float) -> None:
    """Print the port, wait for both buses' clients, send for ``seconds``: ``mix`` = ``rate`` frames/s in all, in
    the log's order; ``each`` = ``rate`` frames/s on each bus, its own frames looped.  Then print what was sent."""
    from agent.sources.log import LogSource
    from simulator.socketcand_server import SocketcandServer

    frames = [(LOG_BUSES[bus], msg) for bus, msg in LogSource(BUNDLED_LOG)
              if bus in LOG_BUSES and not (msg.is_remote_frame or msg.is_fd)]
    lanes = [frames] if mode == "mix" else [[f for f in frames if f[0] == bus] for bus in LOG_BUSES.values()]
    server = SocketcandServer(queue_frames=65536).start()
    print(server.port, flush=True)
    if not server.wait_for_clients(len(LOG_BUSES), 60):
        raise SystemExit("the agent's buses did not connect within 60 s")
    sent = [0] * len(lanes)
    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        if elapsed >= seconds:
            break
        due = int(elapsed * rate) + 1
        for index, lane in enumerate(lanes):
            count = len(lane)
            while sent[index] < due:
                bus, msg = lane[sent[index] % count]
                server.send(msg, channel=bus)
                sent[index] += 1
        time.sleep(0.001)
    server.stop(flush_timeout=30)
    print(json.dumps({"sent": sum(sent), "send_s": time.monotonic() - started,
                      "dropped": server.stats().dropped}), flush=True)


class PacedServer:
    def __init__(self, mode: str, rate: float, seconds: float) -> None:
        self.process = subprocess.Popen([sys.executable, __file__, mode, "--rate", str(rate),
                                         "--seconds", str(seconds)], stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())

    def running(self) -> bool:
        return self.process.poll() is None

    def report(self, timeout: float = 120) -> dict:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        self.process.wait(timeout)
        return json.loads(line)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


# --- the broker's side: what the agent committed and delivered, and when ----------------------------------------

class BatchWatch:
    """Subscribes to every topic on the broker; keeps (arrival time, payload) of each message."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[float, str, bytes]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="soak-watch",
                                  protocol=mqtt.MQTTv5)
        ready = threading.Event()
        self.client.on_connect = lambda client, *a: (client.subscribe("#", qos=1), ready.set())
        self.client.on_message = lambda _c, _u, msg: self.messages.append((time.time(), msg.topic, msg.payload))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not ready.wait(10):
            raise RuntimeError("the benchmark's subscriber could not connect to the broker")

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def latencies(self, since: float) -> dict:
        """Per frame: arrival -> batch committed, arrival -> delivered (s), for frames that arrived after ``since``."""
        from agent.batch import decode_batch

        dictionaries = {"sha256:" + topic.rsplit("/", 1)[1]: payload for _t, topic, payload in self.messages
                        if "/dictionary/" in topic}
        committed: list[float] = []
        delivered: list[float] = []
        for received, topic, payload in self.messages:
            if "/data/" not in topic:
                continue
            batch = decode_batch(payload, dictionaries)
            created = batch.header["created"]
            for table in batch.tables:
                for stamp in table.timestamps:
                    if stamp >= since:
                        committed.append(created - stamp)
                        delivered.append(received - stamp)
        return {"frames": len(committed), "commit": _quantiles(committed), "deliver": _quantiles(delivered)}


def _quantiles(values: list[float]) -> dict:
    if not values:
        return {"p50": math.nan, "p99": math.nan, "max": math.nan}
    values = sorted(values)
    return {"p50": values[len(values) // 2], "p99": values[min(len(values) - 1, int(len(values) * 0.99))],
            "max": values[-1]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("mix", "each"))
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args()
    serve_paced(args.mode, args.rate, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
