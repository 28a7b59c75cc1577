"""Signal catalogs: ``Message.Signal`` -> COVESA VSS path, unit and privacy category.

A catalog is a YAML file next to its DBC (``name.dbc`` -> ``name.catalog.yaml``).
A signal without an entry keeps its DBC name and is ``unclassified``, which the
privacy stage never uploads (fail closed).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cantools.database import Database

from agent.model import ALL_CATEGORIES, CATEGORIES, DATA_ROLE, ROLES, UNCLASSIFIED
from agent.vss import known_paths, propose
from agent.yamlsrc import ConfigError, load_file


@dataclass(frozen=True)
class CatalogEntry:
    vss: str
    unit: str
    category: str
    review: bool = False
    role: str = DATA_ROLE  # data | counter | checksum: transport signals are checked, not uploaded
    algorithm: str | None = None  # checksums: agent.integrity.checksums name (else the DBC family's, if known)
    modulus: int | None = None  # counters that wrap before 2**length (e.g. 15: 0..14)


@dataclass
class Catalog:
    source: str
    entries: dict[str, CatalogEntry]

    def lookup(self, key: str) -> CatalogEntry | None:
        return self.entries.get(key)

    @classmethod
    def empty(cls) -> Catalog:
        return cls("<none>", {})

    def merged(self, other: Catalog) -> Catalog:
        return Catalog(f"{self.source}+{other.source}", {**self.entries, **other.entries})


def checksum_algorithms() -> frozenset[str]:
    # Imported here: agent.integrity reads DBCs through agent.decode, which reads catalogs.
    from agent.integrity.checksums import ALGORITHMS
    return frozenset(ALGORITHMS)


def catalog_path_for(dbc_path: str | Path) -> Path:
    dbc_path = Path(dbc_path)
    return dbc_path.with_name(dbc_path.stem + ".catalog.yaml")


_ENTRY_KEYS = ("vss", "unit", "category", "review", "role", "algorithm", "modulus")
_VSS_RE = re.compile(r"^[A-Z][A-Za-z0-9]*(\.[A-Za-z0-9_]+)+$")


def load_catalog(path: str | Path) -> Catalog:
    doc = load_file(path)
    data = doc.data
    if not isinstance(data, dict) or not isinstance(data.get("signals"), dict):
        raise doc.error((), "a catalog is a mapping with a 'signals' mapping")
    for key in data:
        if key not in ("dbc", "signals"):
            raise doc.error((key,), "unknown key (known keys: dbc, signals)")
    entries: dict[str, CatalogEntry] = {}
    for key, value in data["signals"].items():
        path_ = ("signals", key)
        if "." not in key:
            raise doc.error(path_, "catalog keys are Message.Signal")
        if not isinstance(value, dict):
            raise doc.error(path_, "expected a mapping with vss, unit, category")
        unknown = set(value) - set(_ENTRY_KEYS)
        if unknown:
            raise doc.error((*path_, sorted(unknown)[0]), f"unknown key (known keys: {', '.join(_ENTRY_KEYS)})")
        role = value.get("role", DATA_ROLE)
        if role not in ROLES:
            raise doc.error((*path_, "role"), f"unknown role {role!r} (known: {', '.join(ROLES)})")
        algorithm = value.get("algorithm")
        if algorithm is not None and (role != "checksum" or algorithm not in checksum_algorithms()):
            raise doc.error((*path_, "algorithm"), f"{algorithm!r}: a checksum's algorithm, one of "
                                                   f"{', '.join(sorted(checksum_algorithms()))}")
        modulus = value.get("modulus")
        if modulus is not None and (role != "counter" or not isinstance(modulus, int) or not 2 <= modulus <= 1 << 32):
            raise doc.error((*path_, "modulus"), f"{modulus!r}: a counter's modulus, a whole number 2..2^32")
        category = value.get("category", UNCLASSIFIED)
        if category not in ALL_CATEGORIES:
            raise doc.error((*path_, "category"), f"unknown category {category!r} (known: {', '.join(ALL_CATEGORIES)})")
        vss = str(value.get("vss") or "")
        if vss and not _VSS_RE.match(vss):
            raise doc.error((*path_, "vss"), f"not a VSS path: {vss!r}")
        entries[key] = CatalogEntry(
            vss=vss, unit=str(value.get("unit") or ""), category=category, review=bool(value.get("review", False)),
            role=role, algorithm=algorithm, modulus=modulus)
    return Catalog(str(path), entries)


# Word prefixes that suggest a category when drafting, tried in order on the
# words of "Message Signal" (split at case changes and punctuation).  A guess
# only: drafted entries are marked ``review: true`` until a person confirms them.
_GUESSES: tuple[tuple[str, str], ...] = (
    (r"lat|latitude|lon|lng|longitude|gps|gnss|geo|position|altitude|heading|odo", "location"),
    (r"vin|serial|identif", "identity"),
    (r"cabin|seat|occupan|belt|door|window|hvac|climate|mirror|infotain|radio|media|voice|mic", "cabin"),
    (r"camera|video|image|sentry", "camera"),
    (r"airbag|crash|collision|aeb|impact|incident|emergency", "incident"),
    (r"charg|plug|evse|dcfc|soc|battery|batt|bms|cell", "charging"),
    (r"speed|accel|brake|steer|throttle|pedal|gear|torque|yaw|wheel|rpm|cruise|imu|attitude|roll|pitch",
     "driving"),
    (r"temp|volt|curr|pressure|fault|error|status|health|coolant|oil|tire|tyre|diag|dtc|inverter|motor|power",
     "vehicle_health"),
)
_WORD_RE = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD_RE.findall(text)]


def guess_category(message: str, signal: str) -> str:
    words = _words(f"{message} {signal}")
    for pattern, category in _GUESSES:
        regex = re.compile(rf"^(?:{pattern})")
        if any(regex.match(word) for word in words):
            return category
    return UNCLASSIFIED


def draft_catalog(database: Database, dbc_name: str, roles: Mapping[tuple[str, str], Any] | None = None) -> str:
    """YAML text of a drafted catalog; every entry is marked for review.

    ``roles``: ``(message, signal) -> RoleProposal`` (``agent.integrity.infer``: by name, and by behaviour
    when frames were given); a proposed counter or checksum gets ``role:`` with the reason as a comment.

    VSS paths are proposed only where a signal clearly matches a standard one (``agent.vss``); the rest
    get no path and a comment saying why, for a person to decide."""
    signals = [(m.name, s.name, s.unit or "") for m in sorted(database.messages, key=lambda m: m.name)
               for s in m.signals]
    proposals = propose(signals)
    release, _ = known_paths()
    matched = sum(p.path is not None for p in proposals.values())
    lines = [
        f"# Signal catalog drafted from {dbc_name} by `vehicle-agent catalog init`.",
        "# Categories come with the VSS path where one matched, else they were guessed from names:",
        "# check each entry, then set review: false.",
        f"# VSS paths: {matched} of {len(proposals)} signals match a standard VSS {release} path by name and unit;",
        "# the others have none (each says why): give them one, or leave them known by their DBC name.",
        f"# Categories: {', '.join(CATEGORIES)} (anything else stays unclassified and never leaves the car).",
        f"dbc: {dbc_name}",
        "signals:",
    ]
    for message, signal, unit in signals:
        proposal = proposals[f"{message}.{signal}"]
        lines.append(f"  {message}.{signal}:")
        if proposal.path:
            lines.append(f"    vss: {proposal.path}  # {proposal.reason}")
        else:
            lines.append(f'    vss: ""  # review: {proposal.reason}')
        lines.append(f"    unit: {json.dumps(unit, ensure_ascii=False)}")
        lines.append(f"    category: {proposal.category or guess_category(message, signal)}")
        role = (roles or {}).get((message, signal))
        if role is not None and role.role != DATA_ROLE:
            lines.append(f"    role: {role.role}  # {role.reason}")
            if role.algorithm:
                lines.append(f"    algorithm: {role.algorithm}")
            if role.modulus:
                lines.append(f"    modulus: {role.modulus}")
        lines.append("    review: true")
    return "\n".join(lines) + "\n"


__all__ = ["Catalog", "CatalogEntry", "ConfigError", "catalog_path_for", "draft_catalog", "guess_category",
           "load_catalog"]


def load_catalogs(bus_dbcs: Mapping[str, Sequence[Any]], explicit: Sequence[str]) -> Catalog:
    """The catalogs beside the given DBC files (``agent.dbc.LoadedDbc``, ``NAME.catalog.yaml`` next to each)
    and the explicit ones, merged."""
    catalog = Catalog.empty()
    paths = [catalog_path_for(d.path) for dbcs in bus_dbcs.values() for d in dbcs]
    for path in [p for p in paths if p.is_file()] + [Path(p) for p in explicit]:
        catalog = catalog.merged(load_catalog(path))
    return catalog
