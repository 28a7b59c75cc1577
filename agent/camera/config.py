"""The ``camera:`` section of the agent configuration (paths relative to the state directory).

Example (the defaults)::

    camera:
      enabled: true
      spool: camera/spool            # records arrive here (atomic rename); processed ones move to spool/done
      quarantine: camera/quarantine  # malformed records, each with <name>.reason.txt
      socket: camera/camera.sock     # local Unix socket (0600); "" switches it off
      poll_interval_s: 0.5
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import schema
from agent.yamlsrc import Located

SECTION = ("camera",)


@dataclass(frozen=True)
class CameraConfig:
    enabled: bool = True
    spool: str = "camera/spool"
    quarantine: str = "camera/quarantine"
    socket: str = "camera/camera.sock"
    poll_interval_s: float = 0.5

    def paths(self, state_dir: str | Path) -> tuple[Path, Path, Path | None]:
        """(spool, quarantine, socket or None), resolved against the state directory."""
        state = Path(state_dir)
        return state / self.spool, state / self.quarantine, (state / self.socket) if self.socket else None


def parse_camera(doc: Located | None, data: Any, path: tuple = SECTION) -> CameraConfig:
    """Typed ``camera:`` section; errors read ``file:line: camera.key: problem``."""
    if doc is None:
        doc = Located("<defaults>", {}, {(): 1})
    config = schema.build(CameraConfig, doc, path, data or {})
    if not math.isfinite(config.poll_interval_s) or not 0.01 <= config.poll_interval_s <= 60:
        raise doc.error((*path, "poll_interval_s"), f"must be 0.01 to 60 seconds, got {config.poll_interval_s}")
    for key in ("spool", "quarantine"):
        if not getattr(config, key).strip():
            raise doc.error((*path, key), "needs a directory")
    if config.spool == config.quarantine:
        raise doc.error((*path, "quarantine"), "must differ from the spool directory")
    if config.socket and len(str(config.socket).encode()) > 100:
        raise doc.error((*path, "socket"), "Unix socket paths are limited to about 100 bytes")
    return config


def camera_config(agent_config: Any) -> CameraConfig:
    return parse_camera(agent_config.document, agent_config.camera, SECTION)
