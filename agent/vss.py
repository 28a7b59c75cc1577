"""Standard VSS paths for DBC signals: proposed only where a signal clearly matches, never invented.

``agent/vss_paths.yaml`` (package data) lists the official COVESA VSS paths
we know, each with its unit and the name patterns that identify it.  A signal
gets a path when its name words match one of the path's patterns AND its DBC
unit is one of the path's unit spellings; the most specific pattern wins, and
a path that two signals of one DBC would both take goes to neither (a person
picks).  Qualifier signals (valid flags, accuracies, counters, checksums,
requests, limits ...) describe a measurement rather than being one and get no
path.  Every other signal is left for review, with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml

from agent.model import CATEGORIES

# Where a signal is: the privacy rules (``agent.privacy.decision``) key on these paths, so a path under it
# that is not in the location category would be a leak in waiting.
LOCATION_PREFIX = "Vehicle.CurrentLocation."

# Words that make a signal a qualifier of a measurement, or a guess, rather than the measurement itself.
QUALIFIERS = frozenset({
    "valid", "validity", "accuracy", "status", "stat", "diag", "checksum", "chksum", "crc", "counter", "cnt",
    "alive", "err", "error", "fault", "req", "request", "target", "limit", "lim", "max", "min", "set",
    "setpoint", "cmd", "command", "maybe", "unk", "unknown", "fraction", "offset", "related", "warning", "wrn",
})
_WORD_RE = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")


# Message-name words that say the DBC's author doubts the message, or that it is another battery than the
# traction battery: none of its signals gets a path (a path's ``without`` words rule out that path only).
DOUBTFUL_MESSAGES = frozenset({"incorrect", "unknown", "unk", "test", "dummy"})


def words_of(name: str) -> set[str]:
    """``WheelBasedVehicleSpeed`` -> wheel, based, vehicle, speed; ``WHL_SPD_FL`` -> whl, spd, fl; the
    underscore-separated parts too, so that ``SoC`` is ``soc`` and not only ``so`` + ``c``."""
    camel = {w.lower() for w in _WORD_RE.findall(name)}
    return camel | {part.lower() for part in re.split(r"[^A-Za-z0-9]+", name) if part}


@dataclass(frozen=True)
class VssPath:
    path: str
    category: str  # the privacy category a signal with this path is drafted with
    unit: str
    datatype: str
    units: frozenset[str]
    names: tuple[tuple[frozenset[str], ...], ...]  # alternatives, each a tuple of synonym groups
    without: frozenset[str]  # words of the message or signal that rule this path out (e.g. "twelve" volt)

    def specificity(self, words: set[str], context: set[str]) -> int:
        """How many name groups the best matching alternative has (0: no alternative matches)."""
        if context & self.without:
            return 0
        return max((len(groups) for groups in self.names if all(words & group for group in groups)), default=0)


@dataclass(frozen=True)
class Proposal:
    signal: str  # Message.Signal
    path: str | None  # None: left for review
    reason: str
    category: str | None = None  # the path's privacy category; None: guess it from the name


@lru_cache(maxsize=1)
def known_paths() -> tuple[str, tuple[VssPath, ...]]:
    """(VSS release, the paths) from the packaged list."""
    text = resources.files("agent").joinpath("vss_paths.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    paths = tuple(VssPath(item["path"], checked_category(item), item["unit"], item["datatype"],
                          frozenset(str(u).lower() for u in item["units"]),
                          tuple(tuple(frozenset(group) for group in alternative) for alternative in item["names"]),
                          frozenset(item.get("without", ())))
                  for item in data["paths"])
    return str(data["release"]), paths


def checked_category(item: dict) -> str:
    """The category of one packaged path entry; a position path outside location is refused."""
    category = item.get("category")
    if category not in CATEGORIES:
        raise ValueError(f"agent/vss_paths.yaml: {item.get('path')}: category {category!r} is not one of "
                         f"{', '.join(CATEGORIES)}")
    if item["path"].startswith(LOCATION_PREFIX) and category != "location":
        raise ValueError(f"agent/vss_paths.yaml: {item['path']}: a position path must be in category location")
    return category


def _candidate(message: str, signal_name: str, unit: str) -> tuple[VssPath | None, str]:
    words = words_of(signal_name)
    context = words | words_of(message)
    qualifier = sorted(words & QUALIFIERS)
    if qualifier:
        return None, f"a qualifier of a measurement (word {qualifier[0]!r}), not one: no VSS path proposed"
    doubt = sorted(words_of(message) & DOUBTFUL_MESSAGES)
    if doubt:
        return None, f"the message's name doubts it (word {doubt[0]!r}): no VSS path proposed"
    release, paths = known_paths()
    scored = [(path.specificity(words, context), path) for path in paths]
    named = [(score, path) for score, path in scored if score]
    if not named:
        return None, "no VSS match by name: choose a path, or leave it empty (the signal keeps its DBC name)"
    fitting = [(score, path) for score, path in named if unit.lower() in path.units]  # "KPH" is kph
    if not fitting:
        best = max(named, key=lambda item: item[0])[1]
        shown = repr(unit) if unit else "missing"
        return None, f"the name suggests {best.path}, but the unit is {shown} and VSS {release} wants {best.unit}"
    top = max(score for score, _ in fitting)
    winners = [path for score, path in fitting if score == top]
    if len(winners) > 1:
        return None, "the name fits several VSS paths: " + ", ".join(p.path for p in winners)
    return winners[0], f"VSS {release}: name and unit {unit} match"


def propose(signals: Iterable[tuple[str, str, str]]) -> dict[str, Proposal]:
    """``(message, signal, unit)`` of one DBC -> a proposal per ``Message.Signal``."""
    found: dict[str, tuple[VssPath | None, str]] = {}
    for message, signal, unit in signals:
        found[f"{message}.{signal}"] = _candidate(message, signal, (unit or "").strip())
    takers: dict[str, list[str]] = {}
    for key, (path, _) in found.items():
        if path is not None:
            takers.setdefault(path.path, []).append(key)
    proposals = {}
    for key, (path, reason) in found.items():
        if path is not None and len(takers[path.path]) > 1:
            others = ", ".join(takers[path.path])
            proposals[key] = Proposal(key, None, f"{len(takers[path.path])} signals would take {path.path} "
                                                 f"({others}): pick one")
        else:
            proposals[key] = Proposal(key, path.path if path else None, reason, path.category if path else None)
    return proposals
