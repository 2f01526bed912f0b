"""The research prototype's evaluation matrix replayed through the real path, scored
against an oracle.

Run: ``.venv/bin/python benchmarks/bench_replay.py [--smoke] [--repeats 3] [--amount 40]
[--concurrency 5] [--input-size 10] [--time-scale 0.05] [--placements ...] [--usecases ...]
[--policies ...] [--matrix prototype_evaluation.yaml] [--out-dir benchmarks/results/replay]``

Needs Kafka and Redis (``MULAMBDA_KAFKA_BOOTSTRAP_SERVERS``, ``MULAMBDA_REDIS_URL``); runs
selector, router and synthetic executors in this process
(:class:`~mulambda.harness.inprocess.InProcessPlatform`), over prefixes deleted at the end.

The matrix: the 9 executor profiles of the prototype placed on 4 nodes per placement
(parity, hyperlocal, logical, arbitrary), the nodes' network delays (0, 10, 40, 100 ms,
not scaled), the 4 use cases (scp, mda, psa, env whose weights change over five equal
phases), the 5 policies. Model delays (D, alpha, beta, J) are multiplied by
``--time-scale`` so the whole matrix fits in minutes; executors register the per-element
delay they really have.

Each run (placement, use case, policy, repeat) registers fresh executors (every policy
starts cold), sends ``--amount`` requests from ``--concurrency`` closed-loop clients, and
scores every request with one utility (:mod:`mulambda.harness.evaluation`): the prototype's
bucket latency score of its measured round trip and the true accuracy of the executor
that answered (the accuracy it registered, ``confidences[0]``: the results name the
executor, so the accuracy a policy was shown is the one it is judged on; the gamma-scaled
confidence the emulator answers is recorded too), normalised by the best on offer,
weighted by the use case. The oracle scores what the best executor for that request would
have given, from the true profiles and the load every executor had when the request
reached its executor. Repeats use different seeds; a figure is the mean over repeats
with its 95% interval, and a difference whose interval contains 0 is a tie.

Writes to ``--out-dir``: ``requests.csv.gz`` (one row per request), ``summary.csv`` and
``summary.json`` (utility per cell and policy with intervals, % of oracle, verdicts of
``weighted`` against ``random`` and ``round-robin``), ``rtt_ecdf.png`` and
``accuracy_ecdf.png`` (ECDFs per placement x use case, as the prototype plotted them).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from mulambda.emulator.profiles import PROTOTYPE_PROFILES, SyntheticProfile, parse_profiles
from mulambda.harness.evaluation import (
    Load,
    compare,
    mean_interval,
    oracle_for_utility,
    utility,
)
from mulambda.harness.inprocess import InProcessPlatform, Node, Outcome, Placement
from mulambda.harness.reporting import config_of, ecdf_grid, write_results
from mulambda.kafka import KafkaConfig
from mulambda.runtime.settings import Settings
from mulambda.wire.events import InferenceStatus, SoftWeights

# The prototype's matrix (shared/reference/prototype_evaluation.yaml), unless --matrix.
PLACEMENTS: dict[str, list[list[int]]] = {
    "parity": [[0, 4, 5, 8], [0, 4, 5, 8], [0, 4, 5, 8], [0, 4, 5, 8]],
    "hyperlocal": [[0, 1, 2, 3, 4, 5, 6, 7, 8], [], [], []],
    "logical": [[0, 1, 5, 8], [3, 4, 5, 8], [5, 6, 7, 8], [0, 6, 7, 8]],
    "arbitrary": [[2, 6, 1, 8], [4, 0, 7, 3], [6, 8, 1, 0], [3, 7, 6, 2]],
}
NODE_DELAY_MS: list[float] = [0, 10, 40, 100]
USECASES: dict[str, list[tuple[float, float]]] = {
    "scp": [(1.0, 0.0)],
    "mda": [(0.0, 1.0)],
    "psa": [(0.5, 0.5)],
    "env": [(0.5, 0.5), (0.2, 0.8), (0.0, 1.0), (0.8, 0.2), (1.0, 0.0)],
}
"""Use case → (latency, accuracy) weights per phase; the phases split a run equally."""
POLICIES = ["weighted", "adaptive", "plain-net-latency", "random", "round-robin"]
DEFAULT_OUT = Path(__file__).parent / "results" / "replay"


@dataclass(frozen=True)
class Matrix:
    """What the evaluation varies."""

    profiles: tuple[SyntheticProfile, ...]
    placements: dict[str, list[list[int]]]
    node_delay_ms: list[float]
    usecases: dict[str, list[tuple[float, float]]]

    def nodes(self, placement: str) -> list[Node]:
        return [
            Node(tuple(self.profiles[i] for i in indexes), self.node_delay_ms[n])
            for n, indexes in enumerate(self.placements[placement])
        ]


def load_matrix(path: Path | None) -> Matrix:
    """The built-in matrix, or the one in an evaluation YAML."""
    if path is None:
        return Matrix(PROTOTYPE_PROFILES, PLACEMENTS, NODE_DELAY_MS, USECASES)
    document = yaml.safe_load(path.read_text())
    usecases: dict[str, list[tuple[float, float]]] = {}
    for name, spec in document["usecases"].items():
        phases = spec.get("phases", [spec])
        usecases[name] = [(float(p["latency"]), float(p["accuracy"])) for p in phases]
    return Matrix(
        parse_profiles(document),
        {k: [list(node) for node in v] for k, v in document["scenarios"].items()},
        [float(d) for d in document["node_delay_ms"]],
        usecases,
    )


@dataclass
class Options:
    placements: list[str]
    usecases: list[str]
    policies: list[str]
    repeats: int
    amount: int
    concurrency: int
    input_size: int
    time_scale: float
    heartbeat_s: float
    deadline_s: float
    seed: int
    matrix: Path | None
    out_dir: Path
    progress: bool
    lease_slots: int = 1
    lease_max_age_s: float = 0.1


@dataclass
class Row:
    """One request (a row of ``requests.csv.gz``)."""

    placement: str
    usecase: str
    policy: str
    repeat: int
    index: int
    phase: int
    w_latency: float
    w_accuracy: float
    status: str
    executor_id: str
    model: str
    node: int
    rtt_ms: float
    service_ms: float
    overhead_ms: float
    accuracy: float
    confidence: float
    best_accuracy: float
    utility: float
    oracle_model: str
    oracle_rtt_ms: float
    oracle_accuracy: float
    oracle_utility: float
    error: str


async def run_one(
    platform: InProcessPlatform,
    options: Options,
    matrix: Matrix,
    placement: str,
    usecase: str,
    policy: str,
    repeat: int,
) -> list[Row]:
    """One run: fresh executors, ``amount`` requests, each scored with its oracle."""
    traits, placements = await platform.register(
        accuracy=lambda p: p.accuracy,
        delay_per_element_ms=lambda p: p.alpha * 1000 * options.time_scale,
        heartbeat_s=options.heartbeat_s,
    )
    best = max(p.accuracy for p in placements.values())
    phases = matrix.usecases[usecase]
    outcomes: list[tuple[int, int, Outcome]] = []
    counter = iter(range(options.amount))

    async def client() -> None:
        for index in counter:
            phase = min(len(phases) - 1, index * len(phases) // options.amount)
            w_latency, w_accuracy = phases[phase]
            request = platform.request(
                traits,
                SoftWeights(latency=w_latency, accuracy=w_accuracy),
                policy=policy,
                input_size=options.input_size,
                deadline_s=options.deadline_s,
            )
            outcomes.append((index, phase, await platform.send(request, options.deadline_s + 10)))

    try:
        async with platform.heartbeats(placements, options.heartbeat_s):
            await asyncio.gather(*(client() for _ in range(options.concurrency)))
    finally:
        await platform.finish(placements)
    rows = [
        _row(options, placement, usecase, policy, repeat, i, ph, o, placements, phases, best)
        for i, ph, o in outcomes
    ]
    _add_oracle(rows, outcomes, placements, options)
    rows.sort(key=lambda r: r.index)
    return rows


def _row(
    options: Options,
    placement: str,
    usecase: str,
    policy: str,
    repeat: int,
    index: int,
    phase: int,
    outcome: Outcome,
    placements: Mapping[str, Placement],
    phases: Sequence[tuple[float, float]],
    best: float,
) -> Row:
    w_latency, w_accuracy = phases[phase]
    result = outcome.result
    executor_id = (result.executor_id if result is not None else None) or ""
    answered = placements.get(executor_id)
    ok = result is not None and result.status is InferenceStatus.OK and answered is not None
    confidence = math.nan
    error = outcome.error or (result.error or "" if result is not None else "")
    if ok and result is not None:
        try:
            confidence = float(result.output["predictions"][0]["confidence"])  # type: ignore[index]
        except (KeyError, IndexError, TypeError, ValueError):
            ok, error = False, f"unexpected output {result.output!r:.100}"
    accuracy = answered.accuracy if ok and answered is not None else math.nan
    dispatch = outcome.dispatch
    service = dispatch.service_ms if dispatch is not None else math.nan
    net = answered.net_ms if answered is not None else math.nan
    return Row(
        placement=placement,
        usecase=usecase,
        policy=policy,
        repeat=repeat,
        index=index,
        phase=phase,
        w_latency=w_latency,
        w_accuracy=w_accuracy,
        status="ok" if ok else "error",
        executor_id=executor_id,
        model=answered.profile.name if answered is not None else "",
        node=answered.node if answered is not None else -1,
        rtt_ms=outcome.rtt_ms,
        service_ms=service,
        overhead_ms=max(0.0, outcome.rtt_ms - net - service) if ok else math.nan,
        accuracy=accuracy,
        confidence=confidence,
        best_accuracy=best,
        utility=utility(w_latency, w_accuracy, outcome.rtt_ms, accuracy, best) if ok else 0.0,
        oracle_model="",
        oracle_rtt_ms=math.nan,
        oracle_accuracy=math.nan,
        oracle_utility=math.nan,
        error=error[:200],
    )


def _add_oracle(
    rows: Sequence[Row],
    outcomes: Sequence[tuple[int, int, Outcome]],
    placements: Mapping[str, Placement],
    options: Options,
) -> None:
    """Each row's oracle; a request without a measured overhead (failed) gets the run's
    median overhead and, without a recorded dispatch, idle executors."""
    measured = [r.overhead_ms for r in rows if math.isfinite(r.overhead_ms)]
    median = statistics.median(measured) if measured else 0.0
    offers = [p.offer() for p in placements.values()]
    models = {p.executor_id: p.profile.name for p in placements.values()}
    accuracies = {p.executor_id: p.accuracy for p in placements.values()}
    for row, (_, _, outcome) in zip(rows, outcomes, strict=True):
        loads: Mapping[str, Load] = outcome.dispatch.loads if outcome.dispatch else {}
        chosen, rtt, score = oracle_for_utility(
            offers,
            loads,
            input_size=options.input_size,
            overhead_ms=row.overhead_ms if math.isfinite(row.overhead_ms) else median,
            w_latency=row.w_latency,
            w_accuracy=row.w_accuracy,
            time_scale=options.time_scale,
        )
        row.oracle_model, row.oracle_rtt_ms = models[chosen], rtt
        row.oracle_accuracy, row.oracle_utility = accuracies[chosen], score


# --- summary ---------------------------------------------------------------------------


def summarise(rows: Sequence[Row], options: Options) -> dict[str, Any]:
    """Per cell (placement, use case) and policy: utility per repeat, its interval, %
    of oracle; verdicts of weighted against the baselines; adaptive's average."""
    per_run: dict[tuple[str, str, str, int], list[Row]] = defaultdict(list)
    for r in rows:
        per_run[(r.placement, r.usecase, r.policy, r.repeat)].append(r)
    cells: dict[tuple[str, str], dict[str, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for (placement, usecase, policy, _), group in sorted(per_run.items()):
        figures = cells[(placement, usecase)][policy]
        u = statistics.fmean(r.utility for r in group)
        o = statistics.fmean(r.oracle_utility for r in group)
        figures["utility"].append(u)
        figures["oracle"].append(o)
        figures["pct_oracle"].append(100 * u / o if o > 0 else math.nan)
        ok = [r for r in group if r.status == "ok"]
        figures["rtt_mean"].append(statistics.fmean(r.rtt_ms for r in ok) if ok else math.nan)
        figures["accuracy"].append(statistics.fmean(r.accuracy for r in ok) if ok else math.nan)
        figures["errors"].append(float(len(group) - len(ok)))
    table = []
    verdicts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for (placement, usecase), policies in cells.items():
        for policy, figures in policies.items():
            entry: dict[str, Any] = {"placement": placement, "usecase": usecase, "policy": policy}
            for name, values in figures.items():
                entry[name] = mean_interval(values).as_dict()
            if policy == "weighted":
                for baseline in ("random", "round-robin"):
                    if baseline not in policies:
                        continue
                    # On utility itself, and on % of oracle, which divides out what a
                    # run's machine noise does to every request's round trip.
                    for metric, suffix in (("utility", ""), ("pct_oracle", " (% of oracle)")):
                        verdict = compare(figures[metric], policies[baseline][metric])
                        entry[f"vs_{baseline}{suffix.replace(' ', '_')}"] = verdict
                        verdicts[f"{baseline}{suffix}"][verdict] += 1
            table.append(entry)
    # Each policy's % of oracle averaged over the cells, per repeat, then over repeats.
    averages: dict[str, dict[str, float]] = {}
    for policy in options.policies:
        by_repeat: dict[int, list[float]] = defaultdict(list)
        for (_, _, p, repeat), group in per_run.items():
            if p == policy:
                u = statistics.fmean(r.utility for r in group)
                o = statistics.fmean(r.oracle_utility for r in group)
                if o > 0:
                    by_repeat[repeat].append(100 * u / o)
        if by_repeat:
            averages[policy] = mean_interval(
                [statistics.fmean(v) for v in by_repeat.values()]
            ).as_dict()
    return {
        "cells": table,
        "pct_of_oracle_average": averages,
        "weighted_vs": {k: dict(v) for k, v in verdicts.items()},
    }


def print_summary(summary: Mapping[str, Any]) -> None:
    print()
    print("Utility (prototype score of what each request got) per cell, mean of repeats ± 95% CI;")
    print("% of oracle; weighted's verdict against random / round-robin (tie = inside the noise):")
    print(
        f"{'placement':<10} {'use':<4} {'policy':<17} {'utility':>15} {'% oracle':>14} "
        f"{'rtt ms':>8} {'acc':>6} {'err':>4}  verdicts"
    )
    for e in summary["cells"]:
        u, pct = e["utility"], e["pct_oracle"]
        verdicts = " ".join(
            f"{k[3:].replace('_(%_of_oracle)', '%')}={v}"
            for k, v in e.items()
            if k.startswith("vs_")
        )
        print(
            f"{e['placement']:<10} {e['usecase']:<4} {e['policy']:<17} "
            f"{u['mean']:>7.3f} ± {u['ci95']:<5.3f} {pct['mean']:>6.1f} ± {pct['ci95']:<5.1f} "
            f"{e['rtt_mean']['mean']:>8.1f} {e['accuracy']['mean']:>6.3f} "
            f"{e['errors']['mean']:>4.0f}  {verdicts}"
        )
    print()
    print("% of oracle utility, averaged over the cells (mean of repeats ± 95% CI):")
    for policy, i in summary["pct_of_oracle_average"].items():
        print(f"  {policy:<17} {i['mean']:6.1f} ± {i['ci95']:.1f}")
    for baseline, counts in summary["weighted_vs"].items():
        print(f"weighted vs {baseline}: {dict(counts)}")


def plot(rows: Sequence[Row], options: Options, out_dir: Path) -> None:
    rtt: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    accuracy: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        cell = (r.placement, r.usecase)
        rtt[cell][r.policy].append(r.rtt_ms)
        accuracy[cell][r.policy].append(r.accuracy)
        if r.policy == options.policies[0]:  # one oracle line per cell
            rtt[cell]["oracle"].append(r.oracle_rtt_ms)
            accuracy[cell]["oracle"].append(r.oracle_accuracy)
    scale = f"time scale {options.time_scale:g}, {options.repeats} repeats"
    ecdf_grid(
        out_dir / "rtt_ecdf.png",
        rtt,
        xlabel="round-trip time (ms)",
        title=f"Round-trip time ECDF per placement / use case ({scale})",
        log_x=True,
        rows=options.placements,
        columns=options.usecases,
    )
    ecdf_grid(
        out_dir / "accuracy_ecdf.png",
        accuracy,
        xlabel="accuracy delivered",
        title=f"Delivered accuracy ECDF per placement / use case ({scale})",
        rows=options.placements,
        columns=options.usecases,
    )


# --- main ------------------------------------------------------------------------------


def _csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny configuration (CI): 1 placement, 2 use "
        "cases, 2 policies, 2 repeats of 6 requests",
    )  # fmt: skip
    parser.add_argument("--placements", type=_csv_list, default=None)
    parser.add_argument("--usecases", type=_csv_list, default=None)
    parser.add_argument("--policies", type=_csv_list, default=None)
    parser.add_argument("--repeats", type=int, default=None, help="runs per cell (3)")
    parser.add_argument("--amount", type=int, default=None, help="requests per run (40)")
    parser.add_argument("--concurrency", type=int, default=5)
    parser.add_argument("--input-size", type=int, default=10)
    parser.add_argument("--time-scale", type=float, default=0.05)
    parser.add_argument("--heartbeat-s", type=float, default=1.0)
    parser.add_argument("--deadline-s", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--matrix", type=Path, default=None, help="an evaluation YAML")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--lease-slots", type=int, default=1, help="router selection leases (1: none)"
    )
    parser.add_argument("--lease-max-age-s", type=float, default=0.1)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    smoke = args.smoke
    options = Options(
        placements=args.placements or (["logical"] if smoke else list(PLACEMENTS)),
        usecases=args.usecases or (["scp", "mda"] if smoke else list(USECASES)),
        policies=args.policies or (["weighted", "random"] if smoke else list(POLICIES)),
        repeats=args.repeats or (2 if smoke else 3),
        amount=args.amount or (6 if smoke else 40),
        concurrency=args.concurrency,
        input_size=args.input_size,
        time_scale=args.time_scale,
        heartbeat_s=args.heartbeat_s,
        deadline_s=args.deadline_s,
        seed=args.seed,
        matrix=args.matrix,
        out_dir=args.out_dir,
        progress=not args.no_progress,
        lease_slots=args.lease_slots,
        lease_max_age_s=args.lease_max_age_s,
    )
    if options.amount < 1 or options.repeats < 1 or options.concurrency < 1:
        parser.error("--amount, --repeats and --concurrency must be >= 1")
    if options.time_scale < 0 or options.input_size < 0:
        parser.error("--time-scale and --input-size must be >= 0")
    return options


async def main(options: Options) -> int:
    matrix = load_matrix(options.matrix)
    unknown = (
        set(options.placements) - set(matrix.placements)
        | set(options.usecases) - set(matrix.usecases)
        | set(options.policies) - set(POLICIES)
    )
    if unknown:
        print(f"unknown placement/use case/policy: {sorted(unknown)}", file=sys.stderr)
        return 2
    settings = Settings()
    kafka = KafkaConfig.from_settings(settings, "bench-replay")
    runs = len(options.placements) * options.repeats * len(options.usecases)
    runs *= len(options.policies)
    print(
        f"{runs} runs x {options.amount} requests (concurrency {options.concurrency}, input "
        f"size {options.input_size}); time scale {options.time_scale:g}",
        flush=True,
    )
    started = time.monotonic()
    rows: list[Row] = []
    platform = InProcessPlatform(
        kafka, settings.redis_url, name="bench-replay", seed=options.seed,
        call_timeout_s=options.deadline_s,
        lease_slots=options.lease_slots, lease_max_age_s=options.lease_max_age_s,
    )  # fmt: skip
    bar = tqdm(total=runs, unit="run", disable=not options.progress, file=sys.stderr)
    async with platform:
        for placement in options.placements:
            for repeat in range(options.repeats):
                # New servers per repeat: fresh jitter seeds.
                await platform.start_nodes(
                    matrix.nodes(placement),
                    time_scale=options.time_scale,
                    seed=options.seed * 100 + repeat,
                )
                for usecase in options.usecases:
                    # Policies interleaved, so machine noise spreads over all of them.
                    for policy in options.policies:
                        bar.set_postfix_str(f"{placement} {usecase} {policy} #{repeat}")
                        got = await run_one(
                            platform, options, matrix, placement, usecase, policy, repeat
                        )
                        rows.extend(got)
                        bar.update()
    bar.close()
    summary = summarise(rows, options)
    summary["config"] = config_of(options)
    summary["config"]["elapsed_s"] = round(time.monotonic() - started, 1)
    out = options.out_dir
    write_results(out, rows, summary["cells"], summary)
    plot(rows, options, out)
    print_summary(summary)
    print(f"\n{len(rows)} requests in {time.monotonic() - started:.0f}s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
