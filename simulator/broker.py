"""A local Mosquitto on a free loopback port, for the demo, tests and benchmarks.

Only ever listens on 127.0.0.1.  ``stop()``/``start()`` keep the port and the
persistence file, so outage tests can restart "the same" broker.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


class BrokerError(RuntimeError):
    pass


def find_mosquitto() -> str:
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in MOSQUITTO_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    raise BrokerError("mosquitto not found: install the Debian package 'mosquitto' (scripts/setup does)")


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalBroker:
    """One Mosquitto process with a generated config in ``directory``."""

    def __init__(self, directory: Path, port: int | None = None, tls_lines: list[str] | None = None,
                 extra_config: str = "") -> None:
        self.executable = find_mosquitto()
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = port or free_loopback_port()
        self.log_path = self.directory / "mosquitto.log"
        self.config_path = self.directory / "mosquitto.conf"
        self.config_path.write_text(self._config_text(tls_lines or [], extra_config))
        self._process: subprocess.Popen[bytes] | None = None

    def _config_text(self, tls_lines: list[str], extra: str) -> str:
        lines = [
            # Stay as the current user (as root, mosquitto would switch to user
            # "mosquitto", who cannot read a private temporary directory).
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            "per_listener_settings false",
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.directory}/",
            "persistence_file mosquitto.db",
            # Outage tests queue whole backlogs for offline persistent subscribers.
            "max_queued_messages 100000",
            "max_queued_bytes 0",
            "max_inflight_messages 0",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            *tls_lines,
        ]
        return "\n".join(lines) + "\n" + extra + "\n"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no broker log)"

    def start(self, timeout: float = 10.0) -> LocalBroker:
        if self.running:
            return self
        self._process = subprocess.Popen([self.executable, "-c", str(self.config_path)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                stderr = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                raise BrokerError(f"mosquitto exited with {self._process.returncode}: {stderr.strip()}\n"
                                  f"{self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.2):
                return self
            time.sleep(0.02)
        self.stop()
        raise BrokerError(f"mosquitto did not accept connections on {self.host}:{self.port} within {timeout} s")

    @property
    def pid(self) -> int:
        if self._process is None:
            raise BrokerError("mosquitto is not running")
        return self._process.pid

    def pause(self) -> None:
        """SIGSTOP: the broker keeps its sockets but answers nothing."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        """Crash: SIGKILL, no persistence written, sockets reset by the kernel."""
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()
        process.wait(timeout=10)
        if process.stderr:
            process.stderr.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM: mosquitto writes its persistence file first)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)  # a paused broker cannot handle SIGTERM
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
        if process.stderr:
            process.stderr.close()

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
