"""``vehicle-agent consent``: the owner's sharing preferences.

    vehicle-agent consent show
    vehicle-agent consent grant CATEGORY --for 90d [--level geohash6] [--purpose TEXT]
    vehicle-agent consent revoke CATEGORY
    vehicle-agent consent zones add --lat 31.23 --lon 121.47 --radius 500 [--name home]
    vehicle-agent consent zones list | zones remove ZONE
    vehicle-agent consent per-drive on|off
    vehicle-agent consent history [--since 30d]

With the agent running, the commands go to it over its control socket (only
its own user can connect) and take effect from the next frame.  With the agent
stopped, they edit the state directory directly, under a file lock.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from agent.cli.framework import add_command
from agent.config import load_config
from agent.model import ALL_CATEGORIES
from agent.privacy.config import ConsentConfig, consent_config
from agent.privacy.consent import EXPIRY_CHOICES
from agent.privacy.gateway import consent_call
from agent.privacy.store import ConsentStore
from agent.privacy.transforms import APPROXIMATE_SIZE, LOCATION_LEVELS
from agent.privacy.wording import describe_change
from agent.timespec import iso_local, moment_type


def add_state_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--state", metavar="DIR", help="the agent's state directory")
    group.add_argument("--config", metavar="FILE", help="agent configuration (its state.dir is used)")


def state_from_args(args: argparse.Namespace) -> tuple[Path, ConsentConfig]:
    if args.config:
        config = load_config(args.config)
        return config.resolve(config.state.dir), consent_config(config)
    if args.state:
        return Path(args.state), ConsentConfig()
    raise ValueError("say where the agent keeps its state: --state DIR or --config FILE")


def register(subparsers: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    add_state_arguments(common)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    parser = add_command(subparsers, "consent", "show or change what the car may share", examples=(
        "vehicle-agent consent show --config /etc/vehicle-agent/agent.yaml",
        "vehicle-agent consent grant location --for 7d --level city --config agent.yaml",
        "vehicle-agent consent revoke location --config agent.yaml",
    ), description="Changes go to the running agent over its control socket (or to the state directory when "
                   "it is not running), are kept with their history, and are recorded in the ledger.")
    actions = parser.add_subparsers(dest="consent_action", metavar="ACTION")
    actions.required = True
    add_command(actions, "show", "table of categories, state, level, expiry", parents=[common],
                examples=("vehicle-agent consent show --config agent.yaml --json",))
    grant = add_command(actions, "grant", "allow a category to be uploaded", parents=[common], examples=(
        "vehicle-agent consent grant driving --for drive --config agent.yaml",
        "vehicle-agent consent grant location --for 90d --level district --purpose navigation --config agent.yaml"))
    grant.add_argument("category", choices=ALL_CATEGORIES, metavar="CATEGORY")
    grant.add_argument("--for", dest="expiry", required=True, choices=EXPIRY_CHOICES,
                       help="how long: drive (until the next ignition), 7d, 90d, 1y")
    grant.add_argument("--level", choices=LOCATION_LEVELS, help="location precision (default city)")
    grant.add_argument("--purpose", help="what the data is for (kept with the grant)")
    revoke = add_command(actions, "revoke", "stop uploading a category and purge its backlog", parents=[common],
                         examples=("vehicle-agent consent revoke location --config agent.yaml",))
    revoke.add_argument("category", choices=ALL_CATEGORIES, metavar="CATEGORY")
    zones = add_command(actions, "zones", "privacy zones: no location is sent inside them",
                        examples=("vehicle-agent consent zones list --config agent.yaml",))
    zone_actions = zones.add_subparsers(dest="zone_action", metavar="ZONE_ACTION")
    zone_actions.required = True
    add = add_command(zone_actions, "add", "add a zone (centre + radius)", parents=[common], examples=(
        "vehicle-agent consent zones add --lat 31.2304 --lon 121.4737 --radius 300 --name home --config agent.yaml",))
    add.add_argument("--lat", type=float, required=True, help="centre latitude, degrees")
    add.add_argument("--lon", type=float, required=True, help="centre longitude, degrees")
    add.add_argument("--radius", type=float, required=True, help="radius in metres")
    add.add_argument("--name", default="", help="a label such as home or work")
    add_command(zone_actions, "list", "list zones", parents=[common],
                examples=("vehicle-agent consent zones list --config agent.yaml",))
    remove = add_command(zone_actions, "remove", "remove a zone", parents=[common],
                         examples=("vehicle-agent consent zones remove z1 --config agent.yaml",))
    remove.add_argument("zone", metavar="ZONE", help="zone id from `zones list`, e.g. z1")
    per_drive = add_command(actions, "per-drive", "on: location switches off at every ignition", parents=[common],
                            examples=("vehicle-agent consent per-drive on --config agent.yaml",))
    per_drive.add_argument("switch", choices=("on", "off"))
    history = add_command(actions, "history", "every consent change, oldest first, with its local time",
                          parents=[common], examples=("vehicle-agent consent history --since 30d --config agent.yaml",),
                          description="Read from the state directory (the agent may be running).")
    history.add_argument("--since", metavar="WHEN", type=moment_type("--since"),
                         help="only changes since WHEN: 7d, 12h (ago), yesterday, 2024-06-01[T08:00], epoch s")
    parser.set_defaults(func=run)


def _request(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    action = args.consent_action
    if action == "show":
        return "consent.show", {}
    if action == "grant":
        return "consent.grant", {"category": args.category, "expiry": args.expiry, "level": args.level,
                                 "purpose": args.purpose}
    if action == "revoke":
        return "consent.revoke", {"category": args.category}
    if action == "per-drive":
        return "consent.per_drive", {"enabled": args.switch == "on"}
    if args.zone_action == "add":
        return "consent.zones.add", {"latitude": args.lat, "longitude": args.lon, "radius_m": args.radius,
                                     "name": args.name}
    if args.zone_action == "list":
        return "consent.zones.list", {}
    return "consent.zones.remove", {"zone_id": args.zone}


def run(args: argparse.Namespace) -> int:
    state_dir, config = state_from_args(args)
    if args.consent_action == "history":
        return _history(state_dir, args)
    cmd, request = _request(args)
    result, running = consent_call(state_dir, config, cmd, request)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(render(cmd, request, result, running, signing_key=_signing_key(state_dir) if cmd == "consent.show" else None))
    return 0


def _signing_key(state_dir: Path) -> str:
    """The signing key's fingerprint for ``consent show`` (never creates the key)."""
    from agent.export.anchor import signing_key_fingerprint

    try:
        fingerprint = signing_key_fingerprint(state_dir, create=False)
    except (OSError, ValueError) as exc:
        return f"unreadable ({exc})"
    return fingerprint or "not made yet (the agent makes it at its first start)"


def _history(state_dir: Path, args: argparse.Namespace) -> int:
    changes = [change for change in ConsentStore.in_dir(state_dir).history()
               if args.since is None or change.time >= args.since]
    for change in changes:
        if args.json:
            print(json.dumps(change.to_json(), sort_keys=True))
        else:
            print(f"{iso_local(change.time)}  "
                  f"{describe_change(change.version, change.kind, change.category, change.source, change.detail)}")
    if not changes and not args.json:
        print("no consent changes" + (" in that period" if args.since is not None else "")
              + f" in {state_dir}")
    return 0


# -- output -------------------------------------------------------------------------------

def render_table(result: dict[str, Any]) -> str:
    header = ("CATEGORY", "STATE", "LEVEL", "EXPIRES", "COVERS")
    rows = [header]
    for row in result["categories"]:
        level = f"{row['level']} ({row['level_size']})" if row["level"] else "-"
        expires = "next ignition" if row["expiry"] == "drive" else iso_local(row["expires_at"])
        rows.append((row["category"], row["state"], level, expires, row["covers"]))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(f"{r[i]:<{widths[i]}}" for i in range(4)) + "  " + r[4] for r in rows]
    mode = " (bench mode: everything counts as granted)" if result["bench"] else ""
    lines.append("")
    lines.append(f"consent version {result['version']}, profile {result['profile']}{mode}; "
                 f"{result['zones']} privacy zone(s); location off at each ignition: "
                 f"{'yes' if result['location_off_at_ignition'] else 'no'}")
    return "\n".join(lines)


def render(cmd: str, request: dict[str, Any], result: Any, running: bool, signing_key: str | None = None) -> str:
    where = "" if running else "\n(agent not running: state updated; it applies when the agent starts)"
    if cmd == "consent.show":
        key = ""
        if signing_key:
            key = f"\nvehicle signing key: {signing_key}"
            if signing_key.startswith("SHA256:"):
                key += "\n  (your exports are signed by it: `vehicle-agent export verify DIR --fingerprint SHA256:...`)"
        return render_table(result) + key
    if cmd == "consent.zones.list":
        if not result:
            return "no privacy zones"
        return "\n".join(f"{z['id']}  {z['latitude']:.6f}, {z['longitude']:.6f}  radius {z['radius_m']:g} m  "
                         f"{z['name']}".rstrip() for z in result)
    if cmd == "consent.grant":
        detail = result["detail"]
        level = f" at {detail['level']} ({APPROXIMATE_SIZE[detail['level']]})" if detail.get("level") else ""
        until = "until the next ignition" if detail["expiry"] == "drive" else f"until {iso_local(detail['expires_at'])}"
        return f"{request['category']} granted{level} {until} (consent version {result['version']}){where}"
    if cmd == "consent.revoke":
        if result is None:
            return f"{request['category']} was not granted; nothing changed"
        return (f"{request['category']} revoked (consent version {result['version']}); its unsent data is "
                f"purged{where}")
    if cmd == "consent.zones.add":
        return f"privacy zone {result['id']} added (radius {result['radius_m']:g} m){where}"
    if cmd == "consent.zones.remove":
        return f"privacy zone {request['zone_id']} removed (consent version {result['version']}){where}"
    if result is None:
        return "nothing changed"
    return f"per-drive location {'on' if request['enabled'] else 'off'} (consent version {result['version']}){where}"
