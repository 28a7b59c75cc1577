"""The running agent: live buses -> pipeline -> buffer -> uplink, for months.

Threads:
* one reader thread per bus hands frames over in blocks to a queue bounded
  in frames (drops are counted: a live bus cannot wait); a bus that is
  missing or lost is retried with backoff while the rest works
  (``agent.sources.live``);
* the pipeline thread (``run``) takes blocks of frames, decodes, collects,
  filters by consent, batches and commits to the store; once a second it also ticks the
  batcher, consent expiry, camera intake and incident windows, and proves
  progress to systemd's watchdog;
* the uplink's I/O and send threads publish stored batches and delete them on
  PUBACK;
* the control-socket thread answers the owner's commands (consent, status,
  reload); consent changes take effect from the next frame.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from agent.config import AgentConfig, load_config
from agent.control import CommandRegistry, ControlServer, control_socket_path
from agent.diag.config import DiagnosticsConfig, diagnostics_config
from agent.diag.runner import DiagnosticsRunner, diagnostics_runner
from agent.export.anchor import signing_key_fingerprint, vehicle_anchor
from agent.flow.build import BuildOptions, DataPath, build, build_data_path
from agent.flow.handover import hand_over
from agent.model import ALL_CATEGORIES
from agent.ownerpage.server import OwnerPageServer, start_owner_page
from agent.privacy.commands import consent_commands
from agent.privacy.config import consent_config
from agent.privacy.remote import RemoteCommands
from agent.service.resources import read_resources
from agent.service.sdnotify import Notifier, ProgressWatchdog
from agent.sources.bus_open import bus_kwargs_from_config
from agent.sources.live import LiveSource
from agent.transport_decode import transport_snapshot
from agent.uplink.config import uplink_config

log = logging.getLogger(__name__)
HOUSEKEEPING_S = 1.0
# The retained status message is refreshed with the agent's counters this often.
HEALTH_EVERY_S = 60.0


class AgentRuntime:
    def __init__(self, config_path: str | Path, source: LiveSource | None = None,
                 consent_file: str | None = None, notifier: Notifier | None = None,
                 bench_grant_all: bool = False) -> None:
        """``bench_grant_all`` is only for the demo replaying a log (bench data); ``run`` never sets it."""
        self.config_path = Path(config_path)
        self.config: AgentConfig = load_config(self.config_path)
        self.notifier = notifier or Notifier.from_environ()
        self.started_at = time.time()
        self._stop = threading.Event()
        self._reload_requested = threading.Event()
        self._flush_requested = threading.Event()
        self._dump_requested = threading.Event()  # SIGUSR1: the status as one JSON line in the log
        self._next_health = time.monotonic() + HEALTH_EVERY_S
        self._rate_mark: tuple[float, dict[str, int]] = (time.monotonic(), {})
        self.bus_rates: dict[str, float] = {}
        self.reloads = {"ok": 0, "rejected": 0, "last_error": None}
        self.store_counters_at_stop: dict = {}
        # The commands topic: classified on the MQTT thread, applied and recorded (rate-limited) on the pipeline's.
        self._remote_commands = RemoteCommands()
        self._options = BuildOptions(live=not bench_grant_all, grant_all=bench_grant_all, consent_file=consent_file,
                                     uplink=True, on_command=self._remote_commands.submit, health=self.health)
        stages = build(self.config, self._options)
        self.core = stages.core
        self.store, self.consent, self.uplink = self.core.store, self.core.consent, self.core.uplink
        self.vehicle_id = self.core.vehicle_id
        # Owner-only state (0700), keys 0600; a world-writable state dir is refused (``build`` checks it).
        self.state_dir = self.core.state_dir
        self.source = source or self._open_buses(self.config)
        # Diagnostic requests (off unless configured; only on buses marked transmit); a reload may change them.
        self._diagnostics_config = diagnostics_config(self.config)
        self.diagnostics = diagnostics_runner(self._diagnostics_config, self.source)
        self._use(stages.path)
        self.control = ControlServer(control_socket_path(self.state_dir), self._commands())
        self.owner_page: OwnerPageServer | None = None
        self.watchdog = ProgressWatchdog.from_environ(self.notifier, status=self.status_line)

    def _use(self, path: DataPath) -> None:
        self.path = path
        self.pipeline, self.privacy, self.sidecars = path.pipeline, path.privacy, path.sidecars
        if self.diagnostics is not None:  # flow control for the answers to our requests
            self.pipeline.raw_listeners.append(self.diagnostics.on_raw)

    # -- building ------------------------------------------------------------------
    @staticmethod
    def _open_buses(config: AgentConfig) -> LiveSource:
        if not config.buses:
            raise ValueError(f"{config.source}: no buses configured; the service needs at least one")
        # A bus that cannot be opened yet (adapter late at boot, socketcand server not up) or that dies later is
        # retried with backoff by its own thread while the rest runs; one that can never work (not local, unknown
        # interface) raises BusUrlError: a configuration error.
        return LiveSource.connect({bus.name: bus_kwargs_from_config(bus) for bus in config.buses})

    def _commands(self) -> CommandRegistry:
        registry = CommandRegistry(consent_commands(self.consent.policy))
        registry.register("status", lambda: self.status())
        registry.register("reload", lambda: self.request_reload())
        return registry

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        # The signing key is made (and its fingerprint logged, for the owner to note) at the first start,
        # before the first status message, which carries the fingerprint.
        signing_key_fingerprint(self.state_dir)
        self.control.start()
        if self.uplink is not None:
            self.uplink.start()
        if self.diagnostics is not None:
            self.diagnostics.start()
        self.owner_page = start_owner_page(self.config)  # None when off or without the owner extra
        self.consent.policy.on_ignition()
        self.notifier.ready(self.status_line())
        log.info("agent ready: %d buses, state in %s", len(self.config.buses), self.state_dir)

    def stop(self) -> None:
        self._stop.set()

    def _backlog_batches(self) -> int:
        return sum(item.get("batches", 0) for item in self.store.backlog())

    def frames_seen(self) -> int:
        return self.pipeline.counters.frames_in

    def drain(self, timeout: float) -> bool:
        """Ask the pipeline thread to close every open batch, then wait until the uplink
        has delivered the whole backlog (the demo's end; the service never needs it)."""
        self._flush_requested.set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._flush_requested.is_set():
                backlog = self._backlog_batches()
                in_flight = self.uplink.state()["in_flight"] if self.uplink is not None else 0
                if backlog == 0 and in_flight == 0:
                    return True
            time.sleep(0.05)
        return False

    def request_reload(self) -> dict:
        self._reload_requested.set()
        return {"requested": True}

    def request_status_dump(self) -> None:
        """SIGUSR1 (any thread or a signal handler): the pipeline thread logs the status as one JSON line.
        Not written from the handler itself: it may interrupt the pipeline while it holds the store's lock."""
        self._dump_requested.set()

    def _dump_status(self) -> None:
        self._dump_requested.clear()
        log.info("status: %s", json.dumps(self.status(), separators=(", ", ": "), default=str))

    def run(self) -> None:
        """The pipeline loop; returns after ``stop()`` once everything is flushed."""
        take = self.source.blocks
        next_housekeeping = time.monotonic()
        try:
            while not self._stop.is_set():
                # The blocks waiting, about 4096 frames, before looking at the clock again.
                for bus, msgs in take(0.2):
                    self.pipeline.feed_block(bus, msgs)
                now = time.monotonic()
                if now >= next_housekeeping or self._flush_requested.is_set():
                    next_housekeeping = now + HOUSEKEEPING_S
                    self._housekeeping()
                if self._dump_requested.is_set():
                    self._dump_status()
        finally:
            self._shutdown()

    def _remote_consent(self) -> None:
        # The network can only narrow consent: refusals are counted, and written to the ledger and logged
        # (fixed words and sizes only) at most RemoteCommands.per_minute a minute, then summarised.
        for accepted, what in self._remote_commands.process(self.consent.policy, self.consent.ledger):
            log.info("remote consent command %s: %s", "accepted" if accepted else "refused", what)

    def _measure_rates(self) -> None:
        """Frames per second per bus over the last housekeeping interval."""
        now = time.monotonic()
        elapsed = now - self._rate_mark[0]
        if elapsed <= 0:
            return
        current = {bus: c.frames for bus, c in self.pipeline.decoder.counters.items()}
        previous = self._rate_mark[1]
        self.bus_rates = {bus: round((n - previous.get(bus, 0)) / elapsed, 1) for bus, n in current.items()}
        self._rate_mark = (now, current)

    def _housekeeping(self) -> None:
        self._measure_rates()
        self._remote_consent()
        if self._flush_requested.is_set():
            self.pipeline.flush()
            self.sidecars.flush()
            self.sidecars.poll(time.time())
            self._flush_requested.clear()
        if self._reload_requested.is_set():
            self._reload_requested.clear()
            self._reload()
        self.pipeline.tick()
        self.consent.policy.tick()
        self.core.gate.ready()  # writes what the ledger deferred as soon as it can
        self.sidecars.poll(time.time())
        self.watchdog.progress()
        now = time.monotonic()
        if self.uplink is not None and now >= self._next_health:
            self._next_health = now + HEALTH_EVERY_S
            self.uplink.publish_health()

    def _reload(self) -> None:
        """Re-read config and rules; an invalid new config is rejected and the old one kept.

        No sample is lost: the old pipeline is flushed into the store before the
        new one takes the next frame (frames wait in the bounded queue meanwhile).
        """
        self.notifier.reloading("reloading configuration")
        try:
            config = load_config(self.config_path)
            # The core (uplink, consent) stays as it is, but a file the next start would refuse is refused now.
            uplink_config(config)
            consent_config(config)
            diagnostics = diagnostics_config(config)
            # Made (not started) before anything changes: a changed section gets a new runner, an unchanged one
            # keeps the running one, so requests in flight are not cut off.
            runner = diagnostics_runner(diagnostics, self.source) if diagnostics != self._diagnostics_config \
                else self.diagnostics
            path = build_data_path(config, self.core, self._options)
        except Exception as exc:  # whatever the new file does (even a bug it triggers), the running config stays
            # One line, no traceback: the type and the message ("ConfigError: agent.yaml:4: key: problem").
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:1000]
            self.reloads["rejected"] += 1
            self.reloads["last_error"] = reason
            log.error("reload rejected, keeping the running configuration: %s", reason)
            self.notifier.ready(self.status_line())
            return
        self.pipeline.flush()
        self.sidecars.flush()
        self.sidecars.close()
        hand_over(self.path, path)  # counters and trigger states are the agent's: they go on across a reload
        self.config = config
        self._replace_diagnostics(runner, diagnostics)
        self._use(path)
        self.reloads["ok"] += 1
        log.info("configuration reloaded from %s", self.config_path)
        self.notifier.ready(self.status_line())

    def _replace_diagnostics(self, runner: DiagnosticsRunner | None, config: DiagnosticsConfig) -> None:
        """The reloaded requests: the old runner stops before the new one starts (no request goes out twice),
        and each request's counters go on under its name."""
        old, self._diagnostics_config = self.diagnostics, config
        if runner is old:
            return
        if old is not None:
            old.stop()
            if runner is not None:
                runner.scheduler.adopt_counters(old.scheduler)
        self.diagnostics = runner
        if runner is not None:
            runner.start()
        log.info("diagnostic requests reloaded: %d configured", len(config.requests))

    def _shutdown(self) -> None:
        self.notifier.stopping("flushing open batches")
        try:
            if self.diagnostics is not None:
                self.diagnostics.stop()
            self.source.close()
            self.pipeline.flush()
            self.sidecars.flush()
            self.sidecars.poll(time.time())
            self.sidecars.close()
            if self.uplink is not None:
                self.uplink.stop(timeout=5.0)
            self._remote_commands.flush(self.consent.ledger)  # a pending summary of refused commands
        finally:
            if self.owner_page is not None:
                self.owner_page.stop()
            self.control.stop()
            self.store_counters_at_stop = {"counters": self.store.counters(), "backlog": self.store.backlog()}
            self.store.close()
            log.info("agent stopped")

    # -- status ----------------------------------------------------------------------
    def status(self) -> dict:
        """Counters without personal data (also published on the status topic)."""
        resources = read_resources()
        policy = self.consent.policy
        return {
            "vehicle": self.vehicle_id,
            "uptime_s": round(time.time() - self.started_at, 1),
            "resources": resources.as_dict(),
            "pipeline": self.pipeline.snapshot(),
            "buses": self.source.states(),
            "dropped_at_bus": dict(self.source.dropped),
            "frames_per_s": dict(self.bus_rates),
            "buffer": {"counters": self.store.counters(), "backlog": self.store.backlog()},
            "uplink": self.uplink.state() if self.uplink is not None else {"state": "not configured"},
            "consent": {"version": policy.version,
                        "granted": sorted(c for c in ALL_CATEGORIES if policy.is_granted(c))},
            "sidecars": self.sidecars.counters.as_dict(),
            "transport": transport_snapshot(self.pipeline.decoder),
            "integrity": self.path.integrity.snapshot() if self.path.integrity is not None else {},
            "diagnostics": self.diagnostics.snapshot() if self.diagnostics is not None else None,
            "camera_socket": camera.counters() if (camera := self.sidecars.camera_socket) is not None else None,
            "gate": self.core.gate.counters.as_dict(),
            "ledger": self._ledger_state(),
            "remote_commands": self._remote_commands.counters(),
            "reloads": dict(self.reloads),
        }

    def _ledger_state(self) -> dict:
        ledger = self.consent.ledger
        if ledger is None:
            return {"state": "none"}
        return {"state": "blocked" if ledger.blocked else "ok", "deferred": ledger.deferred, "lost": ledger.lost}

    def final_report(self) -> dict:
        return {"pipeline": self.pipeline.snapshot(), "buffer": self.store_counters_at_stop,
                "uplink": self.uplink.state() if self.uplink is not None else None,
                "sidecars": self.sidecars.counters.as_dict(), "gate": self.core.gate.counters.as_dict(),
                "dropped_at_bus": dict(self.source.dropped)}

    def health(self) -> dict:
        """The agent's own health for the status topic: counters only, nothing personal."""
        snap = self.pipeline.snapshot()
        decode = snap["decode"]
        return {
            "uptime_s": round(time.time() - self.started_at),
            "frames": snap["frames_in"],
            "decoded": sum(c["decoded"] for c in decode.values()),
            "rejected": sum(c["frames"] - c["decoded"] - c["filtered"] for c in decode.values()),
            "dropped_at_bus": sum(self.source.dropped.values()),
            "batches_written": snap["batches_written"],
            "backlog_batches": self._backlog_batches(),
            "rss_mb": round(read_resources().rss_bytes / 1e6, 1),
            "anchor": vehicle_anchor(self.consent.ledger),  # ledger head + signing key, kept outside the car
        }

    def status_line(self) -> str:
        snap = self.pipeline.snapshot()
        uplink = self.uplink.state()["state"] if self.uplink is not None else "off"
        backlog = self._backlog_batches()
        line = f"frames {snap['frames_in']}, batches {snap['batches_written']}, backlog {backlog}, uplink {uplink}"
        # A bus that is not open: "bus gps waiting: cannot open bus ...: ConnectionRefusedError: ..., retry in 4 s".
        return "; ".join([line, *(f"bus {name} {state}" for name, state in self.source.not_open().items())])


