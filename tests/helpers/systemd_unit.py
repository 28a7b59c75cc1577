"""The shipped systemd unit read as systemd reads its directives (tests, and benchmarks that run the agent
the way the unit does)."""

from __future__ import annotations

import shlex
from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "config" / "vehicle-agent.service"


def directives(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value in order (systemd keys may repeat; an empty value resets the list)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, equals, value = line.partition("=")
        assert equals and current is not None, f"{UNIT}:{number}: not KEY=VALUE inside a section: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit_environment(sections: dict[str, dict[str, list[str]]]) -> dict[str, str]:
    """The variables the unit's ``Environment=`` lines set."""
    return dict(item.split("=", 1) for line in sections["Service"].get("Environment", []) for item in shlex.split(line))
