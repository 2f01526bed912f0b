"""Overload: SLO attainment and effective accuracy per policy while the offered load ramps
beyond the most accurate executor's capacity.

Run: ``.venv/bin/python benchmarks/bench_overload.py [--smoke] [--repeats 2]
[--start-rps 3] [--end-rps 30] [--ramp-s 16] [--max-latency-ms 450] [--min-accuracy 0.75]
[--weights 0.2,0.8] [--time-scale 2.5] [--policies ...] [--out-dir benchmarks/results/overload]``

Needs Kafka and Redis, like ``bench_replay.py`` (same in-process platform). Three
synthetic executors on one node (2 ms network delay), from fast and inaccurate to slow and
accurate, each with a capacity (requests served at once; more wait in FIFO order):

=========  =====  ===============  ========  ====================
executor   D ms   beta ms/request  capacity  accuracy (answered)
=========  =====  ===============  ========  ====================
Fast       8      1                8         0.60
Mid        30     2                4         0.80
Accurate   90     5                2         0.95
=========  =====  ===============  ========  ====================

(before ``--time-scale``, 2.5 by default: it multiplies the delays, so at 2.5 Accurate
serves about 7.5 requests/s, Mid about 38, Fast over 300; a slow scale keeps the request
rate, and so the share of the round trip that the machine itself adds, low). Requests
arrive open loop at a rate ramping linearly from ``--start-rps`` to ``--end-rps`` over
``--ramp-s``, each with SLOs (``max_latency_ms``, ``min_accuracy``: Fast is not accurate
enough) and weights (accuracy-heavy by default, so the prototype's ``weighted`` policy,
which ignores load and SLOs, sends everything to Accurate). Every policy gets the same
arrivals and SLOs; only ``adaptive`` honours SLOs.

Per policy: SLO attainment (answered within ``max_latency_ms`` at ``>= min_accuracy``),
effective accuracy (mean accuracy of answers delivered within ``max_latency_ms``; late or
failed answers count 0), p50/p95/p99 round trip of the answered requests, failures; next
to each executor alone (``single:<name>``, every request to it) and the oracle
(:func:`~mulambda.harness.evaluation.simulate_slo_oracle`: a clairvoyant greedy schedule of
the same arrivals with the true profiles, exact queues and the measured median path
overhead). Repeats give 95% intervals.

Writes to ``--out-dir``: ``requests.csv.gz``, ``summary.csv``, ``summary.json`` and
``overload.png`` (SLO attainment and effective accuracy per second of the ramp, against
the offered rate).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mulambda.emulator.profiles import SyntheticProfile
from mulambda.harness.evaluation import (
    Offer,
    mean_interval,
    ramp_offsets,
    simulate_slo_oracle,
    slo_outcome,
)
from mulambda.harness.inprocess import InProcessPlatform, Node, Outcome, Placement
from mulambda.harness.reporting import config_of, line_panels, write_results
from mulambda.harness.verify import percentile
from mulambda.kafka import KafkaConfig
from mulambda.runtime.settings import Settings
from mulambda.wire.events import InferenceStatus, Slo, SoftWeights

PROFILES = (
    SyntheticProfile("Fast", D=8, alpha=0, beta=0.001, J=4, confidences=(0.60,), gamma=0,
                     capacity=8),
    SyntheticProfile("Mid", D=30, alpha=0, beta=0.002, J=10, confidences=(0.80,), gamma=0,
                     capacity=4),
    SyntheticProfile("Accurate", D=90, alpha=0, beta=0.005, J=20, confidences=(0.95,), gamma=0,
                     capacity=2),
)  # fmt: skip
"""With one confidence and gamma 0 each answers (feature 0) the accuracy it registers."""
NODE_DELAY_MS = 2.0
POLICIES = ["weighted", "adaptive", "plain-net-latency", "random", "round-robin"]
DEFAULT_OUT = Path(__file__).parent / "results" / "overload"


@dataclass
class Options:
    policies: list[str]
    singles: list[str]
    repeats: int
    start_rps: float
    end_rps: float
    ramp_s: float
    max_latency_ms: float
    min_accuracy: float
    weights: tuple[float, float]
    time_scale: float
    heartbeat_s: float
    deadline_s: float
    seed: int
    out_dir: Path
    progress: bool
    lease_slots: int = 1
    lease_max_age_s: float = 0.1


@dataclass
class Row:
    """One request (a row of ``requests.csv.gz``)."""

    policy: str
    repeat: int
    index: int
    offset_s: float
    offered_rps: float
    status: str
    model: str
    rtt_ms: float
    overhead_ms: float
    accuracy: float
    attained: bool
    effective_accuracy: float
    error: str


def offered_rps(options: Options, offset_s: float) -> float:
    slope = (options.end_rps - options.start_rps) / options.ramp_s
    return options.start_rps + slope * offset_s


def _row(
    options: Options, label: str, repeat: int, index: int, offset: float, outcome: Outcome,
    placements: dict[str, Placement],
) -> Row:  # fmt: skip
    result = outcome.result
    answered = placements.get((result.executor_id or "") if result is not None else "")
    ok = result is not None and result.status is InferenceStatus.OK and answered is not None
    accuracy = answered.accuracy if ok and answered is not None else math.nan
    attained, effective = slo_outcome(
        ok, outcome.rtt_ms, accuracy, options.max_latency_ms, options.min_accuracy
    )
    dispatch = outcome.dispatch
    overhead = math.nan
    if ok and answered is not None and dispatch is not None:
        overhead = max(0.0, outcome.rtt_ms - answered.net_ms - dispatch.service_ms)
    error = outcome.error or ((result.error or "") if result is not None else "")
    return Row(
        policy=label,
        repeat=repeat,
        index=index,
        offset_s=offset,
        offered_rps=offered_rps(options, offset),
        status="ok" if ok else "error",
        model=answered.profile.name if answered is not None else "",
        rtt_ms=outcome.rtt_ms,
        overhead_ms=overhead,
        accuracy=accuracy,
        attained=attained,
        effective_accuracy=effective,
        error=error[:200],
    )


async def run_one(
    platform: InProcessPlatform, options: Options, label: str, repeat: int, bar: tqdm[Any]
) -> list[Row]:
    """One ramp under one policy (or one executor alone, ``single:<name>``)."""
    single = label.removeprefix("single:") if label.startswith("single:") else None
    traits, placements = await platform.register(
        accuracy=lambda p: p.accuracy,
        delay_per_element_ms=lambda p: p.alpha * 1000 * options.time_scale,
        heartbeat_s=options.heartbeat_s,
        only=None if single is None else [single],
    )
    slo = Slo(max_latency_ms=options.max_latency_ms, min_accuracy=options.min_accuracy)
    weights = SoftWeights(latency=options.weights[0], accuracy=options.weights[1])
    offsets = ramp_offsets(options.start_rps, options.end_rps, options.ramp_s)
    policy = "weighted" if single is not None else label

    async def one(offset: float) -> Outcome:
        request = platform.request(
            traits, weights, policy=policy, input_size=1, deadline_s=options.deadline_s,
            slo=slo,
        )  # fmt: skip
        outcome = await platform.send(request, options.deadline_s + 5)
        bar.update()
        return outcome

    tasks = []
    started = time.perf_counter()
    try:
        async with platform.heartbeats(placements, options.heartbeat_s):
            for offset in offsets:
                delay = started + offset - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(offset)))
            outcomes = await asyncio.gather(*tasks)
    finally:
        # Every client has its answer or gave up: a backlog the router abandoned is not
        # drained (it could take longer than the ramp); the next run gets fresh nodes.
        await platform.finish(placements, timeout_s=0)
    return [
        _row(options, label, repeat, i, offset, outcome, placements)
        for i, (offset, outcome) in enumerate(zip(offsets, outcomes, strict=True))
    ]


def oracle_rows(options: Options, rows: Sequence[Row], repeats: int) -> list[Row]:
    """The oracle's schedule of the same arrivals, once per repeat (same figures: it is
    deterministic; repeated so that its interval is computed like the others')."""
    overheads = [r.overhead_ms for r in rows if math.isfinite(r.overhead_ms)]
    overhead = statistics.median(overheads) if overheads else 0.0
    offsets = ramp_offsets(options.start_rps, options.end_rps, options.ramp_s)
    offers = [Offer(p.name, p, NODE_DELAY_MS, p.accuracy) for p in PROFILES]
    choices = simulate_slo_oracle(
        offsets,
        offers,
        input_size=1,
        overhead_ms=overhead,
        max_latency_ms=options.max_latency_ms,
        min_accuracy=options.min_accuracy,
        time_scale=options.time_scale,
    )
    out = []
    for repeat in range(repeats):
        for i, (offset, choice) in enumerate(zip(offsets, choices, strict=True)):
            _, effective = slo_outcome(
                True, choice.rtt_ms, choice.accuracy, options.max_latency_ms, options.min_accuracy
            )
            out.append(
                Row(
                    "oracle",
                    repeat,
                    i,
                    offset,
                    offered_rps(options, offset),
                    "ok",
                    choice.executor_id,
                    choice.rtt_ms,
                    overhead,
                    choice.accuracy,
                    choice.attained,
                    effective,
                    "",
                )
            )
    return out


# --- summary ---------------------------------------------------------------------------


def summarise(rows: Sequence[Row]) -> dict[str, Any]:
    per_run: dict[tuple[str, int], list[Row]] = defaultdict(list)
    for r in rows:
        per_run[(r.policy, r.repeat)].append(r)
    figures: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (label, _), group in per_run.items():
        ok = [r.rtt_ms for r in group if r.status == "ok"]
        f = figures[label]
        f["requests"].append(len(group))
        f["slo_attainment_pct"].append(100 * sum(r.attained for r in group) / len(group))
        f["violations"].append(sum(not r.attained for r in group))
        f["effective_accuracy"].append(statistics.fmean(r.effective_accuracy for r in group))
        f["failed"].append(len(group) - len(ok))
        for q in (50, 95, 99):
            f[f"p{q}_ms"].append(percentile(ok, q) or math.nan)
    table = []
    for label, f in figures.items():
        entry: dict[str, Any] = {"policy": label}
        entry.update({name: mean_interval(values).as_dict() for name, values in f.items()})
        table.append(entry)
    singles = [e for e in table if e["policy"].startswith("single:")]
    best_single = max(
        singles,
        key=lambda e: (e["slo_attainment_pct"]["mean"], e["effective_accuracy"]["mean"]),
        default=None,
    )
    ratio: dict[str, Any] = {}
    if "weighted" in figures and "adaptive" in figures:
        w = statistics.fmean(figures["weighted"]["violations"])
        a = statistics.fmean(figures["adaptive"]["violations"])
        ratio = {
            "weighted_violations": w,
            "adaptive_violations": a,
            "weighted_over_adaptive": w / a if a > 0 else math.inf,
            "effective_accuracy_adaptive_minus_weighted": statistics.fmean(
                figures["adaptive"]["effective_accuracy"]
            )
            - statistics.fmean(figures["weighted"]["effective_accuracy"]),
        }
    return {
        "policies": table,
        "best_single": best_single["policy"] if best_single else None,
        "violations": ratio,
    }


def print_summary(summary: dict[str, Any]) -> None:
    print()
    print("Per policy (mean of repeats ± 95% CI); effective accuracy counts late/failed as 0:")
    print(
        f"{'policy':<18} {'SLO attained %':>15} {'violations':>12} {'eff. accuracy':>15} "
        f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'failed':>7}"
    )
    for e in summary["policies"]:
        best = "  <- best single" if e["policy"] == summary["best_single"] else ""
        print(
            f"{e['policy']:<18} {e['slo_attainment_pct']['mean']:>7.1f} ± "
            f"{e['slo_attainment_pct']['ci95']:<5.1f} {e['violations']['mean']:>12.1f} "
            f"{e['effective_accuracy']['mean']:>7.3f} ± {e['effective_accuracy']['ci95']:<5.3f} "
            f"{e['p50_ms']['mean']:>8.0f} {e['p95_ms']['mean']:>8.0f} {e['p99_ms']['mean']:>8.0f} "
            f"{e['failed']['mean']:>7.1f}{best}"
        )
    v = summary["violations"]
    if v:
        print(
            f"\nweighted/adaptive SLO violations: {v['weighted_violations']:.1f} / "
            f"{v['adaptive_violations']:.1f} = {v['weighted_over_adaptive']:.1f}x; effective "
            f"accuracy adaptive - weighted = {v['effective_accuracy_adaptive_minus_weighted']:+.3f}"
        )


def plot(rows: Sequence[Row], options: Options, out_dir: Path) -> None:
    """SLO attainment and effective accuracy per second of the ramp."""
    seconds = math.ceil(options.ramp_s)
    sums: dict[str, dict[str, list[float]]] = defaultdict(
        lambda: {"n": [0.0] * seconds, "attained": [0.0] * seconds, "eff": [0.0] * seconds}
    )
    for r in rows:
        b = min(seconds - 1, int(r.offset_s))
        s = sums[r.policy]
        s["n"][b] += 1
        s["attained"][b] += r.attained
        s["eff"][b] += r.effective_accuracy
    attainment = {
        label: [100 * a / n if n else math.nan for a, n in zip(s["attained"], s["n"], strict=True)]
        for label, s in sums.items()
    }
    effective = {
        label: [e / n if n else math.nan for e, n in zip(s["eff"], s["n"], strict=True)]
        for label, s in sums.items()
    }
    x = [offered_rps(options, b + 0.5) for b in range(seconds)]
    line_panels(
        out_dir / "overload.png",
        x,
        {"SLO attainment (%)": attainment, "effective accuracy": effective},
        xlabel="offered load (requests/s)",
        title=(
            f"Overload ramp: SLO {options.max_latency_ms:g} ms / accuracy >= "
            f"{options.min_accuracy:g}, {options.repeats} repeats"
        ),
    )


# --- main ------------------------------------------------------------------------------


def _csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a tiny configuration (CI): 2 policies, 1 single, 2 s ramps",
    )
    parser.add_argument("--policies", type=_csv_list, default=None)
    parser.add_argument(
        "--singles",
        type=_csv_list,
        default=None,
        help="executors to run alone (default: all three)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="runs per policy (2)")
    parser.add_argument("--start-rps", type=float, default=3.0)
    parser.add_argument("--end-rps", type=float, default=None, help="default 30")
    parser.add_argument("--ramp-s", type=float, default=None, help="default 16")
    parser.add_argument("--max-latency-ms", type=float, default=450.0)
    parser.add_argument("--min-accuracy", type=float, default=0.75)
    parser.add_argument(
        "--weights", type=_csv_list, default=["0.2", "0.8"], help="latency,accuracy importances"
    )
    parser.add_argument("--time-scale", type=float, default=2.5)
    parser.add_argument("--heartbeat-s", type=float, default=0.5)
    parser.add_argument("--deadline-s", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--lease-slots", type=int, default=1, help="router selection leases (1: none)"
    )
    parser.add_argument("--lease-max-age-s", type=float, default=0.1)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)  # fmt: skip
    smoke = args.smoke
    if len(args.weights) != 2:
        parser.error("--weights takes latency,accuracy")
    options = Options(
        policies=args.policies or (["weighted", "adaptive"] if smoke else list(POLICIES)),
        singles=args.singles or (["Mid"] if smoke else [p.name for p in PROFILES]),
        repeats=args.repeats or (1 if smoke else 2),
        start_rps=args.start_rps,
        end_rps=args.end_rps or (10.0 if smoke else 30.0),
        ramp_s=args.ramp_s or (2.0 if smoke else 16.0),
        max_latency_ms=args.max_latency_ms,
        min_accuracy=args.min_accuracy,
        weights=(float(args.weights[0]), float(args.weights[1])),
        time_scale=args.time_scale,
        heartbeat_s=args.heartbeat_s,
        deadline_s=args.deadline_s,
        seed=args.seed,
        out_dir=args.out_dir,
        progress=not args.no_progress,
        lease_slots=args.lease_slots,
        lease_max_age_s=args.lease_max_age_s,
    )
    unknown = set(options.policies) - set(POLICIES) | set(options.singles) - {
        p.name for p in PROFILES
    }
    if unknown:
        parser.error(f"unknown policy or executor: {sorted(unknown)}")
    if options.repeats < 1 or options.start_rps <= 0 or options.end_rps <= 0:
        parser.error("--repeats must be >= 1 and rates > 0")
    return options


async def main(options: Options) -> int:
    settings = Settings()
    kafka = KafkaConfig.from_settings(settings, "bench-overload")
    labels = [*options.policies, *(f"single:{name}" for name in options.singles)]
    per_run = len(ramp_offsets(options.start_rps, options.end_rps, options.ramp_s))
    runs = len(labels) * options.repeats
    print(
        f"{runs} runs x {per_run} requests ({options.start_rps:g} -> {options.end_rps:g} "
        f"requests/s over {options.ramp_s:g} s); SLO {options.max_latency_ms:g} ms, accuracy "
        f">= {options.min_accuracy:g}; weights {options.weights}; time scale "
        f"{options.time_scale:g}",
        flush=True,
    )
    started = time.monotonic()
    rows: list[Row] = []
    platform = InProcessPlatform(
        kafka, settings.redis_url, name="bench-overload", seed=options.seed,
        call_timeout_s=options.deadline_s,
        lease_slots=options.lease_slots, lease_max_age_s=options.lease_max_age_s,
    )  # fmt: skip
    bar = tqdm(total=runs * per_run, unit="req", disable=not options.progress, file=sys.stderr)
    async with platform:
        for repeat in range(options.repeats):
            for label in labels:
                # Fresh servers per run: nothing queued by the last run is left.
                await platform.start_nodes(
                    [Node(PROFILES, NODE_DELAY_MS)],
                    time_scale=options.time_scale,
                    seed=options.seed * 100 + repeat,
                )
                bar.set_postfix_str(f"{label} #{repeat}")
                rows.extend(await run_one(platform, options, label, repeat, bar))
    bar.close()
    rows.extend(oracle_rows(options, rows, options.repeats))
    summary = summarise(rows)
    summary["config"] = config_of(options)
    summary["config"]["profiles"] = [p.to_mapping() for p in PROFILES]
    summary["config"]["elapsed_s"] = round(time.monotonic() - started, 1)
    out = options.out_dir
    write_results(out, rows, summary["policies"], summary)
    plot(rows, options, out)
    print_summary(summary)
    print(f"\n{len(rows)} rows in {time.monotonic() - started:.0f}s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
