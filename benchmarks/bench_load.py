"""The whole request path under open-loop load, swept to saturation (issue 12).

Self-contained: starts a private platform of its own (Kafka and Redis on free ports under
a temporary home, then ``--selectors`` selectors, ``--routers`` routers and
``--executors`` synthetic executor processes at ``MULAMBDA_TIME_SCALE=0``, each serving
FastBad, MidOK and SlowGood with a companion per model: what ``deploy/local/up.sh``
runs), sweeps the offered rates and stops everything at the end. Needs the servers of
``deploy/local/infra.sh install`` and the ``bench`` extra (hdrhistogram, matplotlib)::

    .venv/bin/python benchmarks/bench_load.py [--rates 100,300,600,1000,1500,2000] \
        [--duration 10] [--delivery-mode at-least-once|exactly-once] [--label NAME] \
        [--smoke] [--out benchmarks/results]

For each rate, a direct phase (the same Poisson schedule of TF Serving calls straight to
an executor) and the platform phase (hand-written JSON requests through router →
selection → executor → result); latency counts from each request's *scheduled* send
time. Prints a table, writes ``<out>/<label>.json`` and ``<label>-latency.png`` /
``<label>-cpu.png``. See :mod:`mulambda.harness.fullpath` for what is measured, and
``benchmarks/README.md`` for the figures.

Targets (default delivery mode, 2 cores, everything co-located): routing overhead p50 ≤
5 ms and p99 ≤ 20 ms at 100/s; ≥ 1,500/s sustained with p99 ≤ 100 ms; ≤ 1 ms of CPU
per request over the platform's processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform as host
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mulambda.harness.fullpath import SMOKE, FullPathSweep, SweepSpec
from mulambda.harness.platform import LocalPlatform, PlatformSpec
from mulambda.harness.plots import write_plots
from mulambda.harness.tally import Tally

HERE = Path(__file__).resolve().parent


def _progress(phase: str, done: float, tally: Tally) -> None:
    width = 30
    bar = "#" * round(done * width)
    line = (
        f"\r{phase:<22} [{bar:<{width}}] sent {tally.sent:>6}  answered {tally.answered:>6}"
        f"  errors {sum(tally.errors.values()):>4}"
    )
    sys.stderr.write(line)
    if done >= 1.0 and tally.outstanding == 0:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(results: Mapping[str, Any]) -> str:
    """The sweep as a text table, direct baseline beside each platform point."""
    direct = {p["offered_per_s"]: p for p in results["direct"]}
    head = (
        "rate/s  thru/s  p50    p90    p99    p99.9  | ovh p50 ovh p99 | direct p50 p99 "
        "| ratio p50 | cpu ms/req (router sel broker exec) | lag max | err | leased"
    )
    lines = [head]
    for p in results["platform"]:
        lat, ovh, cpu = p["latency_ms"], p["overhead_ms"], p["cpu"]["ms_per_request"]
        d = direct.get(p["offered_per_s"])
        d50 = d["latency_ms"]["p50"] if d else None
        ratio = f"{lat['p50'] / d50:.1f}x" if d50 and lat["p50"] else "-"
        lines.append(
            f"{p['offered_per_s']:>6g}  {p['throughput_per_s']:>6.0f}  {_ms(lat['p50']):<6} "
            f"{_ms(lat['p90']):<6} {_ms(lat['p99']):<6} {_ms(lat['p99.9']):<6} | "
            f"{_ms(ovh['p50']):<7} {_ms(ovh['p99']):<7} | "
            f"{_ms(d50):<5} {_ms(d['latency_ms']['p99'] if d else None):<5}    | {ratio:<9} | "
            f"{p['cpu']['platform_ms_per_request'] or 0:.2f} "
            f"({cpu.get('router') or 0:.2f} {cpu.get('selector') or 0:.2f} "
            f"{cpu.get('broker') or 0:.2f} {cpu.get('executor') or 0:.2f})"
            f"{'':<8}| {p['consumer_lag']['max'] or 0:>7} | {p['errors'] + p['unanswered']:<3} "
            f"| {_leased_share(p.get('selections') or {})}"
            + ("  saturated" if p["saturated"] else "")
        )
    return "\n".join(lines)


def requests_table(results: Mapping[str, Any]) -> str:
    """Kafka requests per second to the broker per client and API, at each rate, and
    per answered request."""
    lines = ["rate/s  client                       API                 req/s   per answer"]
    for p in results["platform"]:
        answered = p["throughput_per_s"] or 0.0
        total = 0.0
        for client, apis in sorted((p.get("kafka_requests_per_s") or {}).items()):
            for api, rate in sorted(apis.items(), key=lambda item: -item[1]):
                total += rate
                share = f"{rate / answered:.2f}" if answered else "-"
                lines.append(
                    f"{p['offered_per_s']:>6g}  {client[:28]:<28} {api[:19]:<19} "
                    f"{rate:>7.1f}   {share}"
                )
        per = f"{total / answered:.2f}" if answered else "-"
        lines.append(f"{p['offered_per_s']:>6g}  {'all':<28} {'':<19} {total:>7.1f}   {per}")
    return "\n".join(lines)


def _leased_share(selections: Mapping[str, int]) -> str:
    """The share of answers routed on a lease slot."""
    total = sum(selections.values())
    return f"{100 * selections.get('leased', 0) / total:.0f}%" if total else "-"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the platform, sweep, stop; the results document."""
    extra_env = dict(kv.split("=", 1) for kv in args.env)
    platform_spec = PlatformSpec(
        selectors=args.selectors,
        routers=args.routers,
        executors=args.executors,
        time_scale=0.0,
        router_concurrency=args.concurrency,
        delivery_mode=args.delivery_mode,
        log_level="WARNING",
        extra_env=extra_env,
        kafka_request_log=args.count_requests,
    )
    sweep = SMOKE if args.smoke else SweepSpec()
    if args.rates:
        sweep = replace(sweep, rates=tuple(float(r) for r in args.rates.split(",")))
    if args.duration:
        sweep = replace(sweep, duration_s=args.duration)
    if args.no_direct:
        sweep = replace(sweep, direct=False)
    started = time.monotonic()
    async with LocalPlatform(platform_spec) as platform:
        print(f"platform up in {time.monotonic() - started:.1f}s", file=sys.stderr)
        results = await FullPathSweep(platform, sweep, progress=_progress).run()
    results["meta"] = {
        "label": args.label,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "host": host.node(),
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "python": sys.version.split()[0],
    }
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", help="comma-separated offered rates (requests/s)")
    parser.add_argument("--duration", type=float, help="seconds per rate")
    parser.add_argument("--smoke", action="store_true", help="seconds-long configuration")
    parser.add_argument("--no-direct", action="store_true", help="skip direct executor calls")
    parser.add_argument(
        "--delivery-mode", choices=("at-least-once", "exactly-once"), default="at-least-once"
    )
    parser.add_argument("--selectors", type=int, default=1)
    parser.add_argument("--routers", type=int, default=1)
    parser.add_argument("--executors", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=64, help="router --concurrency")
    parser.add_argument(
        "--env", action="append", default=[], help="MULAMBDA_X=value for every worker"
    )
    parser.add_argument(
        "--count-requests",
        action="store_true",
        help="the broker logs every request; report requests/s per client and API "
        "(costs broker CPU: take CPU figures from a run without it)",
    )
    parser.add_argument("--label", default=None, help="results file name (default: mode)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    args.label = args.label or f"load-{args.delivery_mode}{'-smoke' if args.smoke else ''}"
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    results = asyncio.run(run(args))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / args.label
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    plots = write_plots(results, stem)
    print(table(results))
    if args.count_requests:
        print(requests_table(results))
    print(f"wrote {stem.with_suffix('.json')}, " + ", ".join(str(p) for p in plots))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
