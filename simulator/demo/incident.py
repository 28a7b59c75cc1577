"""Demo, last part: a hard-brake drive with camera events, the incident snapshot the agent keeps, and
the owner's signed export of it, verified (``vehicle-agent export`` / ``export verify``)."""

from __future__ import annotations

import contextlib
import io
import json
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from agent.camera.events import parse_event
from agent.cli.main import main as agent_main
from agent.config import load_config
from agent.flow.build import build
from agent.sources.log import LogSource
from agent.timespec import iso_local
from simulator.demo.setup import BUNDLED_BUSES, DemoInput, write_config
from simulator.demo.summary import WIDTH
from simulator.scenario import build_scenario, write_scenario


@dataclass
class IncidentResult:
    truth: dict
    snapshots: list[dict]
    export_dir: Path
    export_output: str
    verify_ok: bool
    verify_output: str
    tamper_output: str


def _agent(args: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = agent_main(args)
    return code, out.getvalue().strip()


def run_incident(workdir: Path, seed: int = 7) -> IncidentResult:
    workdir.mkdir(parents=True, exist_ok=True)
    truth = write_scenario(build_scenario("hard-brake", seed=seed), workdir / "drive.log", workdir / "camera")
    buses = {name: dbcs for name, dbcs in BUNDLED_BUSES.values()}
    demo = DemoInput(workdir / "drive.log", buses, {"can0": "truck", "can1": "gps"})
    config_path = write_config(demo, workdir, socketcand_port=1, broker_port=1883, incidents=True)
    stages = build(load_config(config_path))
    store, pipeline, sidecars = stages.core.store, stages.path.pipeline, stages.path.sidecars
    events = sorted((parse_event(p.read_bytes(), p.name) for p in sorted((workdir / "camera").iterdir())),
                    key=lambda e: e.time)
    # Offline, in log time: each camera record reaches the agent when the drive passes its time.
    for bus, msg in LogSource(demo.log, bus_map=demo.bus_map):
        while events and events[0].time <= msg.timestamp:
            sidecars.recorder.on_camera_event(events.pop(0))
        pipeline.feed(bus, msg)
    pipeline.flush()
    sidecars.flush()
    store.close()
    snapshots = [{"id": info.id, "trigger": info.trigger.name, "start": info.start, "end": info.end,
                  "frames": info.raw_frames, "samples": info.samples, "complete": info.complete}
                 for info in sidecars.incidents.list()]
    if not snapshots:
        raise RuntimeError("the hard-brake scenario produced no incident snapshot")
    export_dir = workdir / f"export-{int(time.time())}"
    code, export_output = _agent(["export", "--incident", str(snapshots[0]["id"]), "--out", str(export_dir),
                                  "--config", str(config_path)])
    if code != 0:
        raise RuntimeError(f"export failed: {export_output}")
    # The owner checks against the fingerprint the vehicle showed them (`vehicle-agent identity`), not the key
    # inside the export: a forger would bring their own.
    code, identity_output = _agent(["identity", "--config", str(config_path), "--json"])
    if code != 0:
        raise RuntimeError(f"identity failed: {identity_output}")
    trusted = ["--fingerprint", json.loads(identity_output[identity_output.find("{"):])["signing_key"]]
    code, verify_output = _agent(["export", "verify", str(export_dir), *trusted])
    verify_ok = code == 0
    # Show that verification means something: flip one byte of a copy and verify again.
    tampered = workdir / "export-tampered"
    _copy_tree(export_dir, tampered)
    victim = next(p for p in sorted(tampered.rglob("*.csv")))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    _code, tamper_output = _agent(["export", "verify", str(tampered), *trusted])
    return IncidentResult(truth, snapshots, export_dir, export_output, verify_ok, verify_output, tamper_output)


def _copy_tree(source: Path, target: Path) -> None:
    for path in sorted(source.rglob("*")):
        destination = target / path.relative_to(source)
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(path.read_bytes())


def format_incident(result: IncidentResult) -> str:
    out = ["== Incident: hard-brake scenario, snapshot and the owner's signed export =="]
    out.append(f"  scenario: brake at {iso_local(result.truth.get('brake_at'), 'milliseconds')}, "
               f"impact at {iso_local(result.truth.get('impact_at'), 'milliseconds')}")
    for snap in result.snapshots:
        state = "complete" if snap.get("complete") else "INCOMPLETE"
        out.append(f"  snapshot {snap['id']} ({snap['trigger']}, {state}): {snap.get('frames')} frames, "
                   f"{snap.get('samples')} samples")
        out.append(f"    from {iso_local(snap['start'], 'milliseconds')} to {iso_local(snap['end'], 'milliseconds')}")
    out.append(f"  export: {result.export_dir}")
    out += _wrapped("", result.export_output)
    out += _wrapped("verify: ", result.verify_output)
    out += _wrapped("verify after flipping one byte: ", result.tamper_output)
    return "\n".join(out)


def _wrapped(lead: str, text: str) -> list[str]:
    """A command's output, wrapped for the terminal; a detail line that only repeats what an earlier line
    said (``export verify`` lists each failure again under its verdict) is left out."""
    kept: list[str] = []
    for line in text.splitlines():
        detail = line.strip().split(": ", 1)[-1]
        if line.strip() and not any(detail in earlier for earlier in kept):
            kept.append(line.strip())
    out: list[str] = []
    for index, line in enumerate(kept):
        out += textwrap.wrap((lead if index == 0 else "") + line, WIDTH, initial_indent="  ",
                             subsequent_indent="    ", break_long_words=False, break_on_hyphens=False)
    return out
