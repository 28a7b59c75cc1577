"""``vehicle-agent identity``: who this vehicle is to the outside - the owner's out-of-band check.

    vehicle-agent identity --config agent.yaml [--json]      # or --state DIR

Prints the vehicle's id as it appears in topics and batch headers (the keyed pseudonym of the VIN, or the
configured ``vehicle.id``; never the VIN), the fingerprint of the key that signs the owner's exports, and
the ledger's head.  Write the fingerprint down: ``vehicle-agent export verify DIR --fingerprint SHA256:...``
(or ``vehicle-agent export trust SHA256:...`` once) tells an export of this vehicle from a forged one.
The signing key is made here if the agent has not made it yet and this user owns the state directory.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from agent.cli.consent import add_state_arguments
from agent.cli.framework import add_command
from agent.config import AgentConfig, load_config
from agent.export.anchor import signing_key_fingerprint
from agent.export.signing import KEY_FILE
from agent.ledger import LEDGER_FILE, Ledger
from agent.privacy.pseudonym import KEY_FILE as PSEUDONYM_KEY_FILE


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "identity", "the vehicle's id and signing-key fingerprint (for the owner)",
                         examples=("vehicle-agent identity --config /etc/vehicle-agent/agent.yaml",
                                   "vehicle-agent identity --state /var/lib/vehicle-agent --json"),
                         description="Give the fingerprint to whoever checks your exports: "
                                     "`vehicle-agent export trust SHA256:...` on their machine.")
    add_state_arguments(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def _vehicle_id(config: AgentConfig | None, state_dir: Path) -> tuple[str | None, str]:
    if config is None:
        return None, "unknown without --config (the id comes from the configuration)"
    if not config.vehicle.vin:
        return config.vehicle.id, "configured vehicle.id"
    if not (state_dir / PSEUDONYM_KEY_FILE).exists():
        return None, f"not made yet ({PSEUDONYM_KEY_FILE} is created at the agent's first start)"
    from agent.flow.parts import vehicle_identity  # the agent's own rule; imported late: it pulls in the pipeline
    from agent.privacy.pseudonym import Pseudonymizer

    return vehicle_identity(config, Pseudonymizer.load_or_create(state_dir / PSEUDONYM_KEY_FILE)), \
        "keyed pseudonym of the VIN"


def identity(args: argparse.Namespace) -> dict[str, Any]:
    config = load_config(args.config) if args.config else None
    if config is not None:
        state_dir = config.resolve(config.state.dir)
    elif args.state:
        state_dir = Path(args.state)
    else:
        raise ValueError("say where the agent keeps its state: --state DIR or --config FILE")
    if not state_dir.is_dir():
        raise ValueError(f"{state_dir}: no such state directory (the agent makes it at its first start)")
    vehicle, how = _vehicle_id(config, state_dir)
    existed = (state_dir / KEY_FILE).exists()
    may_create = state_dir.stat().st_uid == os.geteuid() and os.access(state_dir, os.W_OK)
    fingerprint = signing_key_fingerprint(state_dir, create=may_create)
    head = Ledger(state_dir / LEDGER_FILE).anchor()
    return {"vehicle_id": vehicle, "vehicle_id_is": how, "signing_key": fingerprint,
            "signing_key_created_now": fingerprint is not None and not existed,
            "signing_key_file": str(state_dir / KEY_FILE), "ledger_head": head}


def run(args: argparse.Namespace) -> int:
    info = identity(args)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"vehicle id:   {info['vehicle_id'] or '-'}  ({info['vehicle_id_is']})")
    if info["signing_key"] is None:
        print("signing key:  not made yet (the agent makes it at its first start; run this as the agent's user)")
    else:
        made = "  (made just now)" if info["signing_key_created_now"] else ""
        print(f"signing key:  {info['signing_key']}{made}")
        print("              exports of this vehicle are signed by this key: check one with "
              f"`vehicle-agent export verify DIR --fingerprint {info['signing_key']}`")
    head = info["ledger_head"]
    print(f"ledger head:  seq {head['seq']}, line sha256 {head['line_sha256']}" if head else "ledger head:  empty")
    return 0
