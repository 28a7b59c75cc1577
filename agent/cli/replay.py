"""``vehicle-agent replay``: the whole pipeline on a log, as fast as it goes, into a buffer."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from agent.batch.format import DEFAULT_TIME_RESOLUTION_US, MAX_TIME_RESOLUTION_US
from agent.cli.common import add_dbc_arguments, decoder_from_args, log_source_from_args
from agent.cli.framework import add_command
from agent.cli.logread import add_log_arguments, frames, nothing_matched, report_reading, say_hints
from agent.config import load_config
from agent.flow.build import BuildOptions, build
from agent.flow.parts import collection_plan


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "replay", "run decode -> collect -> consent -> batch -> buffer on a log (no live bus)",
        examples=("vehicle-agent replay drive.asc --config agent.yaml --buffer replay.db",
                  "vehicle-agent replay kona.log --dbc dbc/kona-ev/comp_can.dbc --buffer bench.db --grant-all --json",
                  "candump -L can0 | vehicle-agent replay - --config agent.yaml --buffer live.db"),
        description="Without --config every signal is collected at full rate into one stream. Consent applies: "
                    "by default nothing personal is buffered for upload; --grant-all marks a bench run.")
    add_log_arguments(parser)
    add_dbc_arguments(parser, required=False)
    parser.add_argument("--config", help="agent config (buses, DBCs, collection rules, consent)")
    parser.add_argument("--buffer", required=True, metavar="DB", help="buffer database to fill (SQLite)")
    parser.add_argument("--grant-all", action="store_true",
                        help="bench mode: every category counts as granted; batches are marked bench data")
    parser.add_argument("--consent", metavar="FILE", help="run under this consent state (consent.jsonl or dir)")
    parser.add_argument("--batch-age", type=float, default=None, metavar="S", help="batch time span (default 10)")
    parser.add_argument("--time-resolution-us", type=_resolution, default=None, metavar="US",
                        help=f"keep timestamps to this many microseconds (default: the config's, else "
                             f"{DEFAULT_TIME_RESOLUTION_US}); 1 keeps the log's own")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)


def _resolution(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_TIME_RESOLUTION_US:
        raise argparse.ArgumentTypeError(f"expected an integer 1..{MAX_TIME_RESOLUTION_US}, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config) if args.config else None
    if config is None and not args.dbc:
        raise ValueError("give --dbc FILE... or --config FILE")
    # DBCs on the command line decode only what the plan reads; with a config, build picks the decoder.
    decoder = decoder_from_args(args, wanted=collection_plan(config).wants) if args.dbc else None
    stages = build(config, BuildOptions(grant_all=args.grant_all, consent_file=args.consent,
                                        buffer=Path(args.buffer), decoder=decoder, batch_age_s=args.batch_age,
                                        time_resolution_us=args.time_resolution_us))
    store, pipeline, path = stages.core.store, stages.path.pipeline, stages.path
    sidecars = path.sidecars if path.sidecars.recorder is not None else None
    consent = stages.core.consent
    source = log_source_from_args(args, config)
    start = time.perf_counter()
    feed = pipeline.feed
    try:
        for bus, msg in frames(source, f"replay {args.log}"):
            feed(bus, msg)
    finally:
        pipeline.flush()
        if sidecars is not None:
            sidecars.flush()
        elapsed = time.perf_counter() - start
        summary = pipeline.snapshot()
        summary["privacy"] = path.privacy.counters.as_dict()
        summary["store"] = store.counters()
        if sidecars is not None:
            summary["incidents"] = sidecars.counters.as_dict()
        summary["seconds"] = round(elapsed, 3)
        summary["frames_per_s"] = round(summary["frames_in"] / elapsed) if elapsed > 0 else None
        if source.stats.warning:
            summary["log_warning"] = source.stats.warning
        store.close()
        report_reading("replay", source)
        _print(summary, args.json, consent.policy.bench)
    decoded = sum(counts["decoded"] for counts in summary["decode"].values())
    hints = nothing_matched(args, source, pipeline.decoder)
    return say_hints("replay", hints, nothing_decoded=decoded == 0 and not source.stats.warning)


def _print(summary: dict, as_json: bool, bench: bool) -> None:
    if summary.get("log_warning"):  # e.g. "LOG: no CAN frames in 4096 bytes (not an ASC log?)"
        print(f"vehicle-agent replay: warning: {summary['log_warning']}", file=sys.stderr)
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    frames = summary["frames_in"]
    print(f"replayed {frames} frames in {summary['seconds']} s ({summary['frames_per_s']} frames/s)"
          + (" [bench: all categories granted]" if bench else ""))
    for bus, counts in summary["decode"].items():
        print(f"  bus {bus}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(f"  batches written {summary['batches_written']}, samples {summary['samples_written']}, "
          f"bytes {summary['bytes_written']}")
    privacy = summary.get("privacy") or {}
    if privacy:
        print("  consent filter: " + ", ".join(f"{k} {v}" for k, v in privacy.items()))
    if summary.get("incidents"):
        print("  incidents: " + ", ".join(f"{k} {v}" for k, v in summary["incidents"].items() if v))
    if not bench and summary["samples_written"] == 0:
        print("  nothing buffered for upload: no category is granted (default consent). "
              "Use --grant-all for a bench run or --consent FILE.", file=sys.stderr)
