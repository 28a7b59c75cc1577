"""The ``owner_page:`` section of the agent configuration: the owner's local page and archive.

Example (the defaults)::

    owner_page:
      enabled: true
      listen: 127.0.0.1          # loopback: the car's own screen.  A phone reaches the page only if this
                                 # names a local interface's address explicitly (e.g. 192.168.4.1)
      port: 8765
      archive:
        retention_days: 30       # the owner archive (trips, signals at a reduced rate), never uploaded
        max_mb: 50
        rate_hz: 1.0
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import schema
from agent.yamlsrc import Located

SECTION = ("owner_page",)


@dataclass(frozen=True)
class ArchiveSettings:
    retention_days: int = field(default=30, metadata=schema.num(1, 365))
    max_mb: float = field(default=50.0, metadata=schema.num(1, 100_000))
    rate_hz: float = field(default=1.0, metadata=schema.num(0.01, 100))


@dataclass(frozen=True)
class OwnerPageConfig:
    enabled: bool = True
    listen: str = field(default="127.0.0.1", metadata=schema.text(schema.Text(64)))
    port: int = field(default=8765, metadata=schema.num(0, 65_535))
    archive: ArchiveSettings = field(default_factory=ArchiveSettings)

    @property
    def loopback_only(self) -> bool:
        return ipaddress.ip_address(self.listen).is_loopback


def parse_owner_page(doc: Located | None, data: Any, path: tuple = SECTION) -> OwnerPageConfig:
    """Typed ``owner_page:`` section; errors read ``file:line: owner_page.key: problem``."""
    if doc is None:
        doc = Located("<defaults>", {}, {(): 1})
    config = schema.build(OwnerPageConfig, doc, path, data or {})
    try:
        address = ipaddress.ip_address(config.listen)
    except ValueError:
        raise doc.error((*path, "listen"), f"{config.listen!r} is not an IP address (a local interface's "
                                           "address, or 127.0.0.1 for the car's screen only)") from None
    if address.is_unspecified:
        raise doc.error((*path, "listen"), f"{config.listen} would listen on every interface; name the one "
                                           "interface the owner's phone uses")
    return config


def owner_page_config(agent_config: Any) -> OwnerPageConfig:
    return parse_owner_page(agent_config.document, getattr(agent_config, "owner_page", {}), SECTION)


ARCHIVE_FILE = "owner-archive.sqlite"


def archive_path(state_dir: str | Path) -> Path:
    """The owner archive: in the state directory, owner-only, never uploaded."""
    return Path(state_dir) / ARCHIVE_FILE
