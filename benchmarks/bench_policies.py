"""Selection latency per policy and memory of the selector's view.

Run: ``.venv/bin/python benchmarks/bench_policies.py [--iterations N] [--clients C]``

Prints p50/p99 microseconds of one selection for every policy in two setups:
(a) 100 registered executors, all matching the request's traits;
(b) 10,000 registered executors in 10 traits keys, 1,000 matching.
Weights are the prototype's use cases (psa 0.5/0.5, scp 1/0, mda 0/1), input size 10
unless marked; "size=0" removes the size term, the worst case for latency-heavy pruning.
"select" is the whole :func:`mulambda.selection.policies.select` call (candidate filtering, the
policy, the Candidate objects and the SelectionReply); "policy" excludes the reply. Then
prints the traced memory of a 10,000-executor view with ``--clients`` probe latencies per
executor. Targets: weighted p50 <= 20 us in (a) and <= 200 us in (b).
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable
from datetime import timedelta

from mulambda.selection.policies import POLICIES, Policy, PolicyState, select
from mulambda.selection.view import ExecutorView
from mulambda.wire.events import (
    ExecutorRegistration,
    ExecutorStatus,
    LatencyMeasurement,
    LatencySource,
    ModelState,
    SelectionRequest,
    SoftWeights,
    Traits,
    utcnow,
)

NOW = 1_000.0


def traits_of(k: int) -> Traits:
    """The k-th traits key used by the benchmark."""
    return Traits(model_type=f"type-{k}", input_format="tensor-f32[13]", output_format="probs[3]")


def build_view(n_executors: int, n_keys: int, n_clients: int, seed: int = 7) -> ExecutorView:
    """A view with executors spread round-robin over ``n_keys`` traits keys.

    Every executor gets a status (some loaded), probes from ``n_clients`` clients (the
    benchmark's client is ``client-0``; one executor in 20 has no probe to it, to
    exercise the fallback) and a few observed latencies.
    """
    rng = random.Random(seed)
    view = ExecutorView()
    keys = [traits_of(k) for k in range(n_keys)]
    for n in range(n_executors):
        executor_id = f"exec-{n:05d}"
        view.apply_registration(
            ExecutorRegistration(
                executor_id=executor_id,
                model_name=f"model-{n % 9}",
                traits=keys[n % n_keys],
                accuracy=round(rng.uniform(0.5, 1.0), 3),
                endpoint=f"http://10.0.{n // 250}.{n % 250}:8501",
                model_data_delay_ms_per_element=rng.choice([1.0, 2.0, 4.0, 10.0, 40.0]),
            ),
            NOW - 1.0,
        )
        view.apply_status(
            ExecutorStatus(
                executor_id=executor_id,
                model_state=ModelState.AVAILABLE,
                in_flight=rng.randrange(4),
            ),
            NOW - 0.5,
        )
        for c in range(n_clients):
            if c == 0 and n % 20 == 0:
                continue
            view.apply_latency(
                LatencyMeasurement(
                    executor_id=executor_id,
                    client_id=f"client-{c}",
                    latency_ms=rng.choice([0.5, 10.0, 40.0, 100.0]) + rng.random(),
                ),
                NOW,
            )
        if n % 3 == 0:
            view.apply_latency(
                LatencyMeasurement(
                    executor_id=executor_id,
                    client_id="client-1",
                    latency_ms=rng.uniform(20, 300),
                    source=LatencySource.OBSERVED,
                    input_size=10,
                ),
                NOW,
            )
    return view


WEIGHTS = {"psa": (0.5, 0.5), "scp": (1.0, 0.0), "mda": (0.0, 1.0)}
"""The prototype's use cases' (latency, accuracy) weights."""


def request_for(
    traits: Traits, policy: str, weights: tuple[float, float], size: int = 10
) -> SelectionRequest:
    """A request asking for the top 3."""
    return SelectionRequest(
        reply_topic="bench.replies",
        deadline=utcnow() + timedelta(seconds=60),
        client_id="client-0",
        traits=traits,
        weights=SoftWeights(latency=weights[0], accuracy=weights[1]),
        input_size=size,
        policy=policy,
        top_k=3,
    )


def percentile(samples: list[float], q: float) -> float:
    """The q-quantile (0..1) of samples, nearest rank."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def time_calls(fn: Callable[[], object], iterations: int) -> tuple[float, float]:
    """p50 and p99 in microseconds of ``iterations`` calls of ``fn()``."""
    for _ in range(min(200, iterations)):
        fn()
    samples = []
    clock = time.perf_counter_ns
    gc.disable()
    try:
        for _ in range(iterations):
            start = clock()
            fn()
            samples.append((clock() - start) / 1000.0)
    finally:
        gc.enable()
    return statistics.median(samples), percentile(samples, 0.99)


def bench_setup(label: str, view: ExecutorView, iterations: int) -> None:
    """Print one table of p50/p99 per policy (and use case) for traits key 0."""
    traits = traits_of(0)
    print(f"\n{label}: {view.size} executors, {len(view.candidates(traits, NOW))} match")
    print(f"  {'policy':<24} {'select p50':>11} {'select p99':>11} {'policy p50':>11}")
    rows = [(name, use, 10) for name in ("weighted", "adaptive") for use in WEIGHTS]
    # Size 0 makes every size term 0: nothing to prune on for latency-only weights.
    rows += [(name, "scp", 0) for name in ("weighted", "adaptive")]
    rows += [(name, "psa", 10) for name in POLICIES if name not in ("weighted", "adaptive")]
    for name, use, size in rows:
        request = request_for(traits, name, WEIGHTS[use], size)
        state = PolicyState(random.Random(1))
        policy = POLICIES[name]

        def run_select(request: SelectionRequest = request, state: PolicyState = state) -> None:
            reply = select(view, request, NOW, state=state)
            assert reply.candidates

        def run_policy(
            request: SelectionRequest = request,
            state: PolicyState = state,
            policy: Policy = policy,
        ) -> None:
            cands = view.candidates(request.traits, NOW)
            assert policy(request, cands, view, NOW, state)

        p50, p99 = time_calls(run_select, iterations)
        pol50, _ = time_calls(run_policy, iterations)
        label = f"{name} {use}" + ("" if size == 10 else f" size={size}")
        print(f"  {label:<24} {p50:>9.1f}us {p99:>9.1f}us {pol50:>9.1f}us")

    # Worst case for the cached candidate set: a status flips one executor's model state
    # before every selection, so the set (and its accuracy order) is rebuilt each time.
    request = request_for(traits, "weighted", WEIGHTS["scp"])
    state = PolicyState(random.Random(1))
    flip = [
        ExecutorStatus(executor_id="exec-00001", model_state=s, in_flight=1)
        for s in (ModelState.LOADING, ModelState.AVAILABLE)
    ]
    counter = iter(range(10**9))

    def run_rebuild() -> None:
        view.apply_status(flip[next(counter) % 2], NOW - 0.1)
        assert select(view, request, NOW, state=state).status == "ok"

    p50, p99 = time_calls(run_rebuild, iterations)
    print(f"  {'weighted scp + rebuild':<24} {p50:>9.1f}us {p99:>9.1f}us {'':>11}")


def bench_memory(n_executors: int, n_clients: int) -> None:
    """Print traced memory of a view of ``n_executors`` with ``n_clients`` probes each."""
    gc.collect()
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    view = build_view(n_executors, 10, n_clients)
    gc.collect()
    after, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    per = (after - before) / n_executors
    print(
        f"\nmemory: {view.size} executors x {n_clients} clients' probes: "
        f"{(after - before) / 2**20:.1f} MiB ({per / 1024:.2f} KiB/executor, "
        f"incl. the pydantic registration each entry keeps); peak {peak / 2**20:.1f} MiB"
    )


def main() -> None:
    """Parse arguments and run every benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=10)
    args = parser.parse_args()
    bench_setup("(a)", build_view(100, 1, 3), args.iterations)
    bench_setup("(b)", build_view(10_000, 10, 3), max(500, args.iterations // 5))
    for clients in sorted({1, args.clients}):
        bench_memory(10_000, clients)


if __name__ == "__main__":
    main()
