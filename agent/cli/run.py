"""``vehicle-agent run``: the service on live buses (sources -> ... -> uplink)."""

from __future__ import annotations

import argparse
import json
import logging
import signal

from agent.cli.framework import add_command
from agent.runtime import AgentRuntime
from agent.service.exitcodes import EPILOG

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "run", "run the agent on live buses (the systemd service)", examples=(
        "vehicle-agent run --config /etc/vehicle-agent/agent.yaml",
        "systemctl start vehicle-agent   # the same, as the packaged unit runs it",
    ), description="SIGTERM/SIGINT stop cleanly (open batches are flushed to the buffer); SIGHUP reloads the "
                   "config; SIGUSR1 logs the status as one line of JSON.", notes=EPILOG)
    parser.add_argument("--config", required=True, help="agent configuration (YAML)")
    parser.add_argument("--consent", metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("--grant-all", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def install_signal_handlers(runtime: AgentRuntime) -> None:
    def stop(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        runtime.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, lambda _s, _f: runtime.request_reload())
    # The pipeline thread writes the dump: a handler may interrupt it while it holds the store's lock.
    signal.signal(signal.SIGUSR1, lambda _s, _f: runtime.request_status_dump())


def run(args: argparse.Namespace) -> int:
    if args.grant_all:
        raise ValueError("--grant-all is for offline bench runs on logs; the service on live buses refuses it")
    # python-can's socketcand client warns on every partial network read: noise, not news.
    logging.getLogger("can.interfaces.socketcand").setLevel(logging.ERROR)
    if logging.getLogger().level > logging.INFO:
        logging.getLogger("agent").setLevel(logging.INFO)
    # Until the handlers are in place (start-up may take a while on a large buffer), a status request or a
    # reload must not kill the agent (their default action ends the process).
    for signum in (signal.SIGUSR1, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    runtime = AgentRuntime(args.config, consent_file=args.consent)
    install_signal_handlers(runtime)
    runtime.start()
    runtime.run()
    print(json.dumps(runtime.final_report(), default=str), flush=True)
    return 0
