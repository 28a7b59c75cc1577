"""``vehicle-agent buffer status --db DB [--json]``: backlog of the durable buffer.

Opens the database read-only (safe while the agent runs) and shows, per
stream, the batches waiting for the uplink, their samples, compressed bytes
and the age of the oldest, plus the store's counters.
"""

from __future__ import annotations

import json
import sys

from agent.buffer.store import BatchStore
from agent.cli.framework import add_command


def register(subparsers) -> None:
    parser = add_command(subparsers, "buffer", "inspect the durable batch buffer",
                         examples=("vehicle-agent buffer status --db /var/lib/vehicle-agent/buffer.db",))
    actions = parser.add_subparsers(dest="buffer_command", metavar="ACTION")
    actions.required = True
    status = add_command(actions, "status", "backlog per stream and counters",
                         examples=("vehicle-agent buffer status --db state/buffer.db --json",))
    status.add_argument("--db", required=True, help="buffer database (state/buffer.db)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=run)


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if count < 1024 or unit == "MiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def run(args) -> int:
    with BatchStore(args.db, read_only=True) as store:
        backlog = store.backlog()
        counters = store.counters()
    if args.json:
        print(json.dumps({"db": args.db, "streams": backlog, "counters": counters}, indent=2))
        return 0
    out = sys.stdout
    out.write(f"buffer {args.db}: {counters['pending_batches']} batches, {_size(counters['pending_bytes'])}\n")
    if backlog:
        out.write(f"{'stream':<20} {'prio':>4} {'batches':>8} {'samples':>10} {'bytes':>10} {'oldest age':>11}\n")
        for item in backlog:
            out.write(f"{item['stream']:<20} {item['priority']:>4} {item['batches']:>8} {item['samples']:>10} "
                      f"{_size(item['bytes']):>10} {item['oldest_age_s']:>10.1f}s\n")
    out.write("counters: " + ", ".join(f"{k}={v}" for k, v in counters.items()
                                       if not k.startswith("pending")) + "\n")
    return 0
