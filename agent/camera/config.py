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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import schema
from agent.yamlsrc import Located

SECTION = ("camera",)


@dataclass(frozen=True)
class CameraConfig:
    enabled: bool = True
    spool: str = field(default="camera/spool", metadata=schema.text(schema.PATH))
    quarantine: str = field(default="camera/quarantine", metadata=schema.text(schema.PATH))
    # A Unix socket path (relative to the state directory) is limited to about 100 bytes (sun_path).
    socket: str = field(default="camera/camera.sock", metadata=schema.text(schema.Text(100)))
    poll_interval_s: float = field(default=0.5, metadata=schema.num(0.01, 60))

    def paths(self, state_dir: str | Path) -> tuple[Path, Path, Path | None]:
        """(spool, quarantine, socket or None), resolved against the state directory."""
        state = Path(state_dir)
        return state / self.spool, state / self.quarantine, (state / self.socket) if self.socket else None


def parse_camera(doc: Located | None, data: Any, path: tuple = SECTION) -> CameraConfig:
    """Typed ``camera:`` section; errors read ``file:line: camera.key: problem``."""
    if doc is None:
        doc = Located("<defaults>", {}, {(): 1})
    config = schema.build(CameraConfig, doc, path, data or {})
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
