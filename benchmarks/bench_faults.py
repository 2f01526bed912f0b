"""The issue-10 fault scenarios, longer than the test suite's, printing the figures.

Run: ``.venv/bin/python benchmarks/bench_faults.py [--only router-kill,broker-restart]
[--rate 200] [--duration 60] [--fault-at 20] [--deadline 10] [--margin 3]
[--arrivals poisson|fixed] [--seed N] [--selectors 2] [--routers 2] [--executors 3]
[--heartbeat-s 2] [--slow-factor 10] [--out results.json] [--keep-home]``

Unlike the other benchmarks this one starts its own servers: a private Kafka and Redis
(``deploy/local/infra.sh`` under a temporary ``MULAMBDA_HOME`` on free ports, so the
shared ones are never restarted) and the whole platform as processes
(:class:`mulambda.harness.platform.LocalPlatform`): selectors, routers, executor processes
serving FastBad, MidOK and SlowGood at time scale 0, one companion per model and process.
Nothing is left running at the end, nor after Ctrl-C.

Each scenario (``--only`` picks some; default all, in this order): baseline (no fault),
router-kill, selector-kill, executor-kill (kill -9 of router-0, selector-0, the busiest
executor process), broker-restart (``infra.sh restart kafka``), redis-wipe (stopped, data
deleted, started) and slow-executors (every inference call delayed so the routers'
``routers x concurrency`` open calls complete a ``--slow-factor``-th of the rate). Before
each, the platform is healed and must answer a short probe load. Open-loop load at
``--rate`` for ``--duration`` s per scenario; the fault comes ``--fault-at`` s in (default
a third of the duration). Results are read until every request is answered or its
deadline plus ``--margin`` has passed.

Printed per scenario (see :mod:`mulambda.harness.verify` for the definitions): sent,
answered (first result in time, SDK view), ok, errors, lost (no result by deadline plus
margin; ``late`` of them answered after that), request ids answered more than once and
extra results per reader (read_committed / read_uncommitted), premature errors (error
results with at least 5 s of deadline left), recovery (longest stretch in any request
partition without an ok result after the fault was done), how long the fault took,
p50/p99 latency from the scheduled send, the routers' peak RSS, and the top error
reasons. ``--out`` writes every report as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path

from mulambda.harness.infra import PlatformError
from mulambda.harness.load import LoadSpec
from mulambda.harness.platform import LocalPlatform, PlatformSpec
from mulambda.harness.scenarios import (
    FAULTS,
    RunOptions,
    ensure_serving,
    run_scenario,
    slow_delay_ms,
)
from mulambda.harness.verify import ScenarioReport, render_table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(FAULTS), help="comma-separated scenarios")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load each")
    parser.add_argument("--fault-at", type=float, default=None, help="default: duration / 3")
    parser.add_argument("--deadline", type=float, default=10.0, help="seconds per request")
    parser.add_argument("--margin", type=float, default=3.0, help="seconds past the deadline")
    parser.add_argument("--arrivals", choices=("poisson", "fixed"), default="poisson")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--selectors", type=int, default=2)
    parser.add_argument("--routers", type=int, default=2)
    parser.add_argument("--executors", type=int, default=3)
    parser.add_argument("--heartbeat-s", type=float, default=2.0)
    parser.add_argument("--slow-factor", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=None, help="write the reports as JSON")
    parser.add_argument("--keep-home", action="store_true", help="keep logs for post-mortems")
    args = parser.parse_args(argv)
    unknown = [name for name in args.only.split(",") if name not in FAULTS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(FAULTS)}")
    if args.fault_at is None:
        args.fault_at = args.duration / 3
    return args


async def run(args: argparse.Namespace) -> list[ScenarioReport]:
    """Start the platform, measure every scenario asked for, stop it."""
    spec = PlatformSpec(
        selectors=args.selectors,
        routers=args.routers,
        executors=args.executors,
        heartbeat_interval_s=args.heartbeat_s,
    )
    load = LoadSpec(
        rate=args.rate,
        duration_s=args.duration,
        deadline_s=args.deadline,
        arrivals=args.arrivals,
        seed=args.seed,
    )
    options = RunOptions(fault_at_s=args.fault_at, margin_s=args.margin, load_after_fault_s=None)
    reports: list[ScenarioReport] = []
    started = time.monotonic()
    async with LocalPlatform(spec, keep_home=args.keep_home) as platform:
        print(f"platform up in {time.monotonic() - started:.0f}s", flush=True)
        for name in args.only.split(","):
            fault = FAULTS[name]
            try:
                healing = await ensure_serving(platform)
            except PlatformError as exc:
                print(f"{name}: skipped, the platform does not serve: {exc.reason}", flush=True)
                break
            if name == "slow-executors":
                print(f"{name}: every call delayed {slow_delay_ms(spec, load):.0f} ms", flush=True)
            report = await run_scenario(
                platform,
                fault,
                load,
                options,
                notes=tuple(f"healed first: {line}" for line in healing),
            )
            reports.append(report)
            print(render_table([report]), flush=True)
    return reports


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    reports = asyncio.run(run(args))
    if reports:
        print()
        print(
            f"{args.rate:g} requests/s, {args.duration:g} s per scenario, fault at "
            f"{args.fault_at:g} s, deadline {args.deadline:g} s, margin {args.margin:g} s"
        )
        print(render_table(reports))
    if args.out is not None:
        args.out.write_text(json.dumps([r.to_json() for r in reports], indent=2) + "\n")
    return 0 if reports else 1


if __name__ == "__main__":
    sys.exit(main())
