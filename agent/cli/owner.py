"""``vehicle-agent owner``: pair a screen with the owner's page, or serve the page with the agent stopped.

    vehicle-agent owner pair --config agent.yaml     # prints a one-time code for the page
    vehicle-agent owner serve --state DIR [--port N]  # the page without the agent (Ctrl-C ends it)
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from agent.cli.framework import add_command
from agent.config import load_config, parse_config
from agent.ownerpage.pairing import CODE_TTL_S, Pairing


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "owner", "the owner's page: pair a screen, or serve it with the agent stopped",
                         examples=("vehicle-agent owner pair --config /etc/vehicle-agent/agent.yaml",
                                   "vehicle-agent owner serve --state /var/lib/vehicle-agent --port 8765"),
                         description="The page is served by `vehicle-agent run` (owner_page: in the config); "
                                     "a browser gets in only with a one-time code from `owner pair`.")
    actions = parser.add_subparsers(dest="owner_action", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", metavar="FILE", help="agent configuration (its state.dir and owner_page)")
    where.add_argument("--state", metavar="DIR", help="the agent's state directory")
    add_command(actions, "pair", "print a one-time pairing code (valid once, for 10 minutes)", parents=[common],
                examples=("vehicle-agent owner pair --config agent.yaml",))
    serve = add_command(actions, "serve", "serve the owner's page until Ctrl-C (the agent may be stopped)",
                        parents=[common], examples=("vehicle-agent owner serve --state /var/lib/vehicle-agent",))
    serve.add_argument("--port", type=int, default=None, help="port (default: owner_page.port, 8765)")
    parser.set_defaults(func=run)


def _config(args: argparse.Namespace):
    if args.config:
        return load_config(args.config)
    state = Path(args.state).resolve()
    return parse_config(f"state: {{dir: '{state}'}}", source="--state", base_dir=state)


def run(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.owner_action == "pair":
        code = Pairing(config.resolve(config.state.dir)).new_code()
        print(f"pairing code: {code}  (type it into the owner page; valid once, for {int(CODE_TTL_S // 60)} minutes)")
        return 0
    from agent.ownerpage.server import OwnerPageServer

    server = OwnerPageServer(config, port=args.port)
    server.start()
    print(f"owner page on {server.url} (Ctrl-C ends it); pair a screen with `vehicle-agent owner pair`", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
