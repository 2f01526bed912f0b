"""Replay of the research prototype's evaluation matrix through the real MuLambda path.

Run: ``.venv/bin/python benchmarks/bench_matrix.py [--quick] [--amount N]
[--input-sizes 10,1000] [--concurrency 5,10] [--scenarios ...] [--usecases ...]
[--policies ...] [--time-scale 0.1] [--net-scale 1.0] [--heartbeat-s 1.0]
[--accuracy registered|answered] [--matrix prototype_evaluation.yaml] [--out results.csv]``

Needs Kafka and Redis (``MULAMBDA_KAFKA_BOOTSTRAP_SERVERS``, ``MULAMBDA_REDIS_URL``).
Everything runs in this process on loopback, over a topic prefix and Redis key prefix of
its own that are deleted at the end:

* the 9 synthetic executor profiles placed on 4 "nodes" per scenario (parity,
  hyperlocal, logical, arbitrary); each node is an :class:`ExecutorServer` whose
  ``network_delay_ms`` is the node's delay (``node_delay_ms`` times ``--net-scale``);
* a :class:`Selector` and a :class:`Router`; the client publishes each
  :class:`InferenceRequest` with a :class:`Producer` and reads the results with a
  group-less consumer, so every request takes the real path (inference-requests →
  router → selection request/reply → executor → inference-results);
* the selector learns the client→executor network latency from probe
  :class:`LatencyMeasurement`\\ s equal to each node's delay (what a companion would
  measure), and executor load from emulated companion heartbeats every
  ``--heartbeat-s`` carrying each model's in-flight count (0 disables them).

Time: synthetic model delays (D, alpha, beta, J) are multiplied by ``--time-scale``
so the matrix runs in minutes; executors register the per-element delay they really
have (``alpha * 1000 * time_scale`` ms). Network delays are not scaled by default, so
at ``--time-scale 0.1`` this is the prototype's testbed with models ten times faster.

Each run (scenario, use case, policy, input size, concurrency) registers fresh executor
ids under traits of its own, so every policy starts cold (nothing learned), then sends
``--amount`` requests from ``concurrency`` closed-loop workers (the ``env`` use case
switches weights over five equal phases of the run), waits until the executors are idle
and deregisters them. A request asks for feature 0 with ``input_size`` data elements; the
"accuracy that each request got" is the ``confidence`` the model answered. Executors
register the prototype's accuracy ``confidences[0]`` (``--accuracy registered``), which
is not what they answer for feature 0 (``confidences[0] / 3 ** gamma``: SlowGood
registers 1.0 but answers 0.37, FastGood 0.9 and 0.65); ``--accuracy answered`` registers
the latter, so accuracy-aware policies see the accuracy they are judged on.

Printed: per (scenario, use case, policy) mean/p50/p95 round-trip time (client send to
result read), mean confidence and errors, over all loads; then per use case which policy
did best on its own objective: mean RTT for ``scp`` (latency only), mean confidence for
``mda`` (accuracy only), and for ``psa``/``env`` the mean of ``w_latency *
smooth_latency_score(rtt) + w_accuracy * confidence / best confidence on offer`` (errors
score 0). Raw rows (one per request) go to ``--out`` as CSV.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import math
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from mulambda.emulator import ExecutorServer, SyntheticModel
from mulambda.emulator.profiles import PROTOTYPE_PROFILES, SyntheticProfile, parse_profiles
from mulambda.errors import DecodeError
from mulambda.kafka import (
    Admin,
    KafkaConfig,
    KafkaConsumer,
    Producer,
    assign_at_end,
    fetch,
    partitions_of,
    start_consumer,
)
from mulambda.routing.router import Router
from mulambda.runtime.settings import Settings
from mulambda.selection.policies import PolicyState, smooth_latency_score
from mulambda.selection.selector import Selector
from mulambda.selection.store import ViewStore
from mulambda.wire.catalog import Catalog, Topic, load_catalog
from mulambda.wire.codec import decode
from mulambda.wire.events import (
    ExecutorRegistration,
    ExecutorStatus,
    InferenceRequest,
    InferenceResult,
    InferenceStatus,
    LatencyMeasurement,
    LatencySource,
    ModelState,
    SoftWeights,
    Traits,
    deadline_in,
)

CLIENT = "bench-client"

# The prototype's matrix (reference/prototype_evaluation.yaml), used unless --matrix is given.
SCENARIOS: dict[str, list[list[int]]] = {
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
POLICIES = ["weighted", "plain-net-latency", "random", "round-robin", "adaptive"]


@dataclass(frozen=True)
class Matrix:
    """What the evaluation varies."""

    profiles: tuple[SyntheticProfile, ...]
    scenarios: dict[str, list[list[int]]]
    node_delay_ms: list[float]
    usecases: dict[str, list[tuple[float, float]]]


def load_matrix(path: str | None) -> Matrix:
    """The built-in matrix, or the one in an evaluation YAML."""
    if path is None:
        return Matrix(PROTOTYPE_PROFILES, SCENARIOS, NODE_DELAY_MS, USECASES)
    document = yaml.safe_load(Path(path).read_text())
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


@dataclass(frozen=True)
class RunKey:
    """One cell of the matrix."""

    scenario: str
    usecase: str
    policy: str
    input_size: int
    concurrency: int


@dataclass
class Row:
    """One request's outcome (a CSV row)."""

    scenario: str
    usecase: str
    policy: str
    input_size: int
    concurrency: int
    time_scale: float
    index: int
    phase: int
    w_latency: float
    w_accuracy: float
    status: str
    executor_id: str = ""
    node: str = ""
    model: str = ""
    attempts: int = 0
    rtt_ms: float = math.nan
    router_ms: float = math.nan
    confidence: float = math.nan
    objective: float = 0.0
    error: str = ""


@dataclass
class Placement:
    """An executor of the current run: where it runs and what it serves."""

    executor_id: str
    node: int
    profile: SyntheticProfile
    server: ExecutorServer
    model: SyntheticModel


@dataclass
class Options:
    """Parsed command line."""

    scenarios: list[str]
    usecases: list[str]
    policies: list[str]
    input_sizes: list[int]
    concurrency: list[int]
    amount: int
    time_scale: float
    net_scale: float
    heartbeat_s: float
    accuracy: str
    deadline_s: float
    seed: int
    out: Path
    matrix: str | None
    report: Path | None = None


# --- the client side -------------------------------------------------------------------


class ResultReader:
    """Reads the results topic without a group and hands each result to its waiter."""

    def __init__(self, kafka: KafkaConfig, topic: str) -> None:
        self._kafka = kafka
        self._topic = topic
        self._consumer: KafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Future[tuple[float, InferenceResult]]] = {}

    async def start(self) -> None:
        consumer = await start_consumer(self._kafka, "results reader", fetch_max_wait_ms=50)
        # Fix the start now: results of later requests lie beyond.
        await assign_at_end(consumer, await partitions_of(self._kafka, self._topic))
        self._consumer = consumer
        self._task = asyncio.create_task(self._read(consumer))

    async def stop(self) -> None:
        task, consumer = self._task, self._consumer
        self._task, self._consumer = None, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if consumer is not None:
            await consumer.stop()

    def expect(self, correlation_id: str) -> asyncio.Future[tuple[float, InferenceResult]]:
        """A future of (perf_counter at receipt, result), registered before sending."""
        future: asyncio.Future[tuple[float, InferenceResult]] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiting[correlation_id] = future
        return future

    def forget(self, correlation_id: str) -> None:
        self._waiting.pop(correlation_id, None)

    async def _read(self, consumer: KafkaConsumer) -> None:
        while True:
            batches = await fetch(consumer, timeout_ms=200, what="results read")
            now = time.perf_counter()
            for records in batches.values():
                for raw in records:
                    key = raw.key.decode() if raw.key else ""
                    future = self._waiting.pop(key, None)
                    if future is None or future.done():
                        continue
                    try:
                        future.set_result((now, decode(InferenceResult, raw.value)))
                    except DecodeError as exc:
                        future.set_exception(exc)


# --- the bench -------------------------------------------------------------------------


class Bench:
    """Infrastructure shared by every run: topics, selector, router, producer, reader."""

    def __init__(self, settings: Settings, options: Options, matrix: Matrix) -> None:
        self.options = options
        self.matrix = matrix
        tag = uuid.uuid4().hex[:8]
        self.tag = tag
        self.kafka = KafkaConfig.from_settings(settings, f"bench-matrix-{tag}")
        self.catalog: Catalog = load_catalog(f"bench-matrix-{tag}.")
        self.redis_url = settings.redis_url
        self.key_prefix = f"bench-matrix-{tag}:"
        self.selector = Selector(
            self.kafka,
            self.catalog,
            ViewStore(self.redis_url, key_prefix=self.key_prefix),
            selector_id=f"bench-selector-{tag}",
            group_id=f"bench-selector-{tag}",
            state=PolicyState(random.Random(options.seed)),
        )
        self.router = Router(
            self.kafka,
            self.catalog,
            router_id=f"bench-router-{tag}",
            group_id=f"bench-router-{tag}",
            concurrency=256,
            selection_timeout_s=5.0,
            call_timeout_s=options.deadline_s,
        )
        self.producer = Producer(self.kafka)
        self.reader = ResultReader(self.kafka, self.catalog.name(Topic.INFERENCE_RESULTS))
        self._admin = Admin(self.kafka)

    async def start(self) -> None:
        await self._admin.start()
        await self._admin.apply(self.catalog)
        await self.producer.start()
        await self.selector.start()
        await self.router.start()
        await self.reader.start()
        await self._wait_answering()

    async def stop(self) -> None:
        for step in (self.reader.stop, self.router.stop, self.selector.stop, self.producer.stop):
            try:
                await step()
            except Exception as exc:  # why: clean up the rest regardless
                print(f"cleanup step failed: {exc!r}", file=sys.stderr)
        try:
            async with ViewStore(self.redis_url, key_prefix=self.key_prefix) as store:
                await store.clear()
            await self._admin.delete([self.catalog.name(t) for t in Topic])
        finally:
            await self._admin.stop()

    async def _wait_answering(self) -> None:
        """Until a request makes the whole trip (router, selector, results): a check
        that the pipeline works before any figure is taken."""
        deadline = time.monotonic() + 60
        traits = Traits(model_type="warm-up", input_format="none", output_format="none")
        while True:
            request = self._request(traits, SoftWeights(), None, 1, 0)
            future = self.reader.expect(request.correlation_id)
            await self.producer.send_and_wait(
                self.catalog.name(Topic.INFERENCE_REQUESTS), request, key=CLIENT
            )
            try:
                _, result = await asyncio.wait_for(future, 10)
            except TimeoutError:
                result = None
            # Any answer but a selection timeout means the selector answered.
            if result is not None and "selection failed" not in (result.error or ""):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the selector never answered: {result}")
            await asyncio.sleep(0.2)

    def _request(
        self,
        traits: Traits,
        weights: SoftWeights,
        policy: str | None,
        input_size: int,
        feature: int,
    ) -> InferenceRequest:
        return InferenceRequest(
            reply_topic=self.catalog.name(Topic.INFERENCE_RESULTS),
            deadline=deadline_in(self.options.deadline_s),
            client_id=CLIENT,
            traits=traits,
            weights=weights,
            policy=policy,
            body={"instances": [{"feature": feature, "data": [0] * input_size}]},
            input_size=input_size,
        )

    # --- a scenario: its nodes ----------------------------------------------------------

    async def start_nodes(self, scenario: str) -> list[ExecutorServer | None]:
        servers: list[ExecutorServer | None] = []
        for node, indexes in enumerate(self.matrix.scenarios[scenario]):
            if not indexes:
                servers.append(None)
                continue
            models = {
                self.matrix.profiles[i].name: SyntheticModel(
                    self.matrix.profiles[i],
                    time_scale=self.options.time_scale,
                    seed=self.options.seed * 1000 + node * 10 + i,
                )
                for i in indexes
            }
            delay = self.matrix.node_delay_ms[node] * self.options.net_scale
            server = ExecutorServer("127.0.0.1", 0, models, network_delay_ms=delay)
            await server.start()
            await server.wait_loaded(10)
            servers.append(server)
        return servers

    # --- a run ------------------------------------------------------------------------

    async def run(
        self, key: RunKey, servers: Sequence[ExecutorServer | None], run_no: int
    ) -> list[Row]:
        options = self.options
        traits = Traits(
            model_type=f"{key.scenario}-{run_no}-{self.tag}",
            input_format="synthetic",
            output_format="confidence",
        )
        placements = await self._register(key, traits, servers, run_no)
        best_confidence = max(p.profile.confidence(0) for p in placements.values())
        heartbeats = (
            asyncio.create_task(self._heartbeats(list(placements.values())))
            if options.heartbeat_s > 0
            else None
        )
        phases = self.matrix.usecases[key.usecase]
        rows: list[Row] = []
        counter = iter(range(options.amount))

        async def worker() -> None:
            for index in counter:
                phase = min(len(phases) - 1, index * len(phases) // options.amount)
                w_latency, w_accuracy = phases[phase]
                row = Row(
                    key.scenario,
                    key.usecase,
                    key.policy,
                    key.input_size,
                    key.concurrency,
                    options.time_scale,
                    index,
                    phase,
                    w_latency,
                    w_accuracy,
                    status="error",
                )
                await self._one(row, traits, placements, best_confidence)
                rows.append(row)

        try:
            await asyncio.gather(*(worker() for _ in range(key.concurrency)))
        finally:
            if heartbeats is not None:
                heartbeats.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeats
            await self._idle(placements.values())
            await self._deregister(placements)
        rows.sort(key=lambda r: r.index)
        return rows

    async def _one(
        self,
        row: Row,
        traits: Traits,
        placements: Mapping[str, Placement],
        best_confidence: float,
    ) -> None:
        weights = SoftWeights(latency=row.w_latency, accuracy=row.w_accuracy)
        request = self._request(traits, weights, row.policy, row.input_size, 0)
        future = self.reader.expect(request.correlation_id)
        sent = time.perf_counter()
        try:
            await self.producer.send_and_wait(
                self.catalog.name(Topic.INFERENCE_REQUESTS), request, key=CLIENT
            )
            received, result = await asyncio.wait_for(future, self.options.deadline_s + 10)
        except Exception as exc:  # why: a lost request is a data point, not a crash
            self.reader.forget(request.correlation_id)
            row.error = f"no result: {exc!r}"[:200]
            return
        row.rtt_ms = (received - sent) * 1000
        row.router_ms = result.latency_ms if result.latency_ms is not None else math.nan
        row.attempts = result.attempts
        row.executor_id = result.executor_id or ""
        placement = placements.get(row.executor_id)
        if placement is not None:
            row.node = f"node-{placement.node}"
            row.model = placement.profile.name
        if result.status is not InferenceStatus.OK:
            row.error = (result.error or "")[:200]
            return
        try:
            confidence = float(result.output["predictions"][0]["confidence"])  # type: ignore[index]
        except (KeyError, IndexError, TypeError, ValueError):
            row.error = f"unexpected output {result.output!r:.100}"
            return
        row.status = "ok"
        row.confidence = confidence
        row.objective = row.w_latency * smooth_latency_score(row.rtt_ms) + row.w_accuracy * (
            confidence / best_confidence if best_confidence else 0.0
        )

    async def _register(
        self,
        key: RunKey,
        traits: Traits,
        servers: Sequence[ExecutorServer | None],
        run_no: int,
    ) -> dict[str, Placement]:
        options = self.options
        placements: dict[str, Placement] = {}
        topic = self.catalog.name(Topic.EXECUTOR_REGISTRATIONS)
        deliveries = []
        for node, indexes in enumerate(self.matrix.scenarios[key.scenario]):
            server = servers[node]
            if server is None:
                continue
            for i in indexes:
                profile = self.matrix.profiles[i]
                executor_id = f"{self.tag}-r{run_no}-n{node}-{profile.name}"
                model = server.models[profile.name][0]
                assert isinstance(model, SyntheticModel)
                placements[executor_id] = Placement(executor_id, node, profile, server, model)
                registration = ExecutorRegistration(
                    executor_id=executor_id,
                    model_name=profile.name,
                    traits=traits,
                    accuracy=(
                        profile.accuracy
                        if options.accuracy == "registered"
                        else profile.confidence(0)
                    ),
                    endpoint=server.url,
                    model_data_delay_ms_per_element=profile.alpha * 1000 * options.time_scale,
                    node=f"node-{node}",
                    # Without heartbeats the registration alone must keep it live.
                    heartbeat_interval_s=options.heartbeat_s or 3600,
                )
                deliveries.append(await self.producer.send(topic, registration, key=executor_id))
        await asyncio.gather(*deliveries)
        # Probes only once the registrations are in: the view ignores latencies of
        # executors it does not know. (Different topics, so no ordering between them.)
        await self._wait_view(placements, probes=False)
        deliveries = [
            await self.producer.send(
                self.catalog.name(Topic.LATENCY_MEASUREMENTS),
                LatencyMeasurement(
                    executor_id=p.executor_id,
                    client_id=CLIENT,
                    latency_ms=self.matrix.node_delay_ms[p.node] * options.net_scale,
                    source=LatencySource.PROBE,
                ),
                key=p.executor_id,
            )
            for p in placements.values()
        ]
        await asyncio.gather(*deliveries)
        await self._wait_view(placements, probes=True)
        return placements

    async def _wait_view(self, placements: Mapping[str, Placement], *, probes: bool) -> None:
        deadline = time.monotonic() + 30
        view = self.selector.view
        while True:
            entries = [view.get(eid) for eid in placements]
            if all(e is not None and (not probes or CLIENT in e.probes) for e in entries):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the selector did not learn the run's executors in 30 s")
            await asyncio.sleep(0.02)

    async def _heartbeats(self, placements: list[Placement]) -> None:
        """Emulated companions: each executor's model state and in-flight count."""
        topic = self.catalog.name(Topic.EXECUTOR_STATUS)
        while True:
            for p in placements:
                status = ExecutorStatus(
                    executor_id=p.executor_id,
                    model_state=ModelState.AVAILABLE,
                    in_flight=p.model.in_flight,
                    heartbeat_interval_s=self.options.heartbeat_s,
                )
                await self.producer.send(topic, status, key=p.executor_id)
            await asyncio.sleep(self.options.heartbeat_s)

    async def _idle(self, placements: Iterable[Placement], timeout_s: float = 120) -> None:
        """Until no executor serves anything (calls the router gave up on included)."""
        deadline = time.monotonic() + timeout_s
        while any(p.model.in_flight for p in placements):
            if time.monotonic() > deadline:
                print("warning: executors still busy after the run", file=sys.stderr)
                return
            await asyncio.sleep(0.05)

    async def _deregister(self, placements: Mapping[str, Placement]) -> None:
        topic = self.catalog.name(Topic.EXECUTOR_REGISTRATIONS)
        deliveries = [await self.producer.send(topic, None, key=eid) for eid in placements]
        await asyncio.gather(*deliveries)


# --- reporting -------------------------------------------------------------------------


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Cell:
    """Figures of a group of rows."""

    n: int
    errors: int
    rtt_mean: float
    rtt_p50: float
    rtt_p95: float
    confidence: float
    objective: float
    executors: int
    top_share: float


def summarise(rows: Sequence[Row]) -> Cell:
    ok = [r for r in rows if r.status == "ok"]
    rtts = [r.rtt_ms for r in ok]
    used = Counter(r.executor_id for r in ok)
    return Cell(
        n=len(rows),
        errors=len(rows) - len(ok),
        rtt_mean=statistics.fmean(rtts) if rtts else math.nan,
        rtt_p50=_percentile(rtts, 0.5),
        rtt_p95=_percentile(rtts, 0.95),
        confidence=statistics.fmean(r.confidence for r in ok) if ok else math.nan,
        objective=statistics.fmean(r.objective for r in rows) if rows else math.nan,
        executors=len(used),
        top_share=(used.most_common(1)[0][1] / len(ok)) if ok else math.nan,
    )


def usecase_score(usecase: str, cell: Cell) -> tuple[float, float]:
    """The use case's own objective, then a tie-break; higher is better.

    scp: mean RTT (then confidence); mda: mean confidence, errors counting 0 (then RTT);
    psa/env: the weighted objective (then RTT). Primaries are rounded so that policies
    that picked the same models tie and the tie-break decides.
    """
    if usecase == "scp":
        return (-round(cell.rtt_mean, 3) if cell.errors == 0 else -math.inf, cell.confidence)
    if usecase == "mda":
        return (round(cell.confidence * (cell.n - cell.errors) / cell.n, 6), -cell.rtt_mean)
    return (round(cell.objective, 6), -cell.rtt_mean)


def report(rows: Sequence[Row], options: Options) -> None:
    by_run: dict[RunKey, list[Row]] = defaultdict(list)
    by_triple: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for r in rows:
        by_run[RunKey(r.scenario, r.usecase, r.policy, r.input_size, r.concurrency)].append(r)
        by_triple[(r.scenario, r.usecase, r.policy)].append(r)

    print()
    print("Per run (scenario, use case, policy, input size, concurrency):")
    header = (
        f"{'scenario':<10} {'usecase':<4} {'policy':<17} {'size':>5} {'conc':>4} "
        f"{'rtt mean':>9} {'p50':>8} {'p95':>8} {'conf':>6} {'obj':>6} {'err':>4} "
        f"{'execs':>5} {'top%':>5}"
    )
    print(header)
    for key in sorted(by_run, key=lambda k: (k.scenario, k.usecase, k.input_size, k.concurrency)):
        c = summarise(by_run[key])
        print(
            f"{key.scenario:<10} {key.usecase:<4} {key.policy:<17} {key.input_size:>5} "
            f"{key.concurrency:>4} {c.rtt_mean:>9.1f} {c.rtt_p50:>8.1f} {c.rtt_p95:>8.1f} "
            f"{c.confidence:>6.3f} {c.objective:>6.3f} {c.errors:>4} {c.executors:>5} "
            f"{c.top_share * 100:>5.0f}"
        )

    print()
    print("Per (scenario, use case, policy), all loads together (RTT in ms):")
    print(
        f"{'scenario':<10} {'usecase':<4} {'policy':<17} {'n':>5} {'rtt mean':>9} "
        f"{'p50':>8} {'p95':>8} {'conf':>6} {'obj':>6} {'err':>4}"
    )
    for (scenario, usecase, policy), group in sorted(by_triple.items()):
        c = summarise(group)
        print(
            f"{scenario:<10} {usecase:<4} {policy:<17} {c.n:>5} {c.rtt_mean:>9.1f} "
            f"{c.rtt_p50:>8.1f} {c.rtt_p95:>8.1f} {c.confidence:>6.3f} {c.objective:>6.3f} "
            f"{c.errors:>4}"
        )

    print()
    print(
        "Per use case, on its own objective (scp: mean RTT ms, lower is better; mda: mean "
        "confidence; psa/env: mean weighted objective), averaged over the cells "
        "(scenario x input size x concurrency); wins = cells where the policy was best "
        "(ties broken by RTT, for scp by confidence):"
    )
    usecases = sorted({r.usecase for r in rows})
    policies = [p for p in options.policies if any(r.policy == p for r in rows)]
    for usecase in usecases:
        cells: dict[tuple[str, int, int], dict[str, Cell]] = defaultdict(dict)
        for key, group in by_run.items():
            if key.usecase == usecase:
                cells[(key.scenario, key.input_size, key.concurrency)][key.policy] = summarise(
                    group
                )
        wins: Counter[str] = Counter()
        for per_policy in cells.values():
            best = max(per_policy, key=lambda p: usecase_score(usecase, per_policy[p]))
            wins[best] += 1
        line = []
        for policy in policies:
            scores = [per_policy[policy] for per_policy in cells.values() if policy in per_policy]
            if usecase == "scp":
                value = statistics.fmean(c.rtt_mean for c in scores) if scores else math.nan
                text = f"{value:.1f} ms"
            elif usecase == "mda":
                value = statistics.fmean(c.confidence for c in scores) if scores else math.nan
                text = f"{value:.3f}"
            else:
                value = statistics.fmean(c.objective for c in scores) if scores else math.nan
                text = f"{value:.3f}"
            line.append(f"{policy}={text} ({wins[policy]}/{len(cells)} wins)")
        best_policy = wins.most_common(1)[0][0] if wins else "-"
        print(f"  {usecase}: best={best_policy}; " + "; ".join(line))

    if "adaptive" in policies and "weighted" in policies:
        print()
        print("adaptive vs weighted, cell by cell (on each use case's own objective):")
        for usecase in usecases:
            better = worse = tied = 0
            for key, group in by_run.items():
                if key.usecase != usecase or key.policy != "adaptive":
                    continue
                twin = by_run.get(
                    RunKey(key.scenario, usecase, "weighted", key.input_size, key.concurrency)
                )
                if not twin:
                    continue
                a = usecase_score(usecase, summarise(group))
                w = usecase_score(usecase, summarise(twin))
                better += a[0] > w[0]
                worse += a[0] < w[0]
                tied += a[0] == w[0]
            print(
                f"  {usecase}: adaptive better in {better}, worse in {worse}, tied in {tied} "
                "cell(s) on the objective itself"
            )


def read_csv(path: Path) -> list[Row]:
    """Rows written by :func:`write_csv`."""
    kinds = {f.name: f.type for f in fields(Row)}
    rows = []
    with path.open(newline="") as handle:
        for raw in csv.DictReader(handle):
            values: dict[str, Any] = {}
            for name, text in raw.items():
                kind = kinds[name]
                values[name] = (
                    int(text) if kind == "int" else float(text) if kind == "float" else text
                )
            rows.append(Row(**values))
    return rows


def write_csv(rows: Sequence[Row], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        names = [f.name for f in fields(Row)]
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))


# --- main ------------------------------------------------------------------------------


def _csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small subset (about a minute)")
    parser.add_argument("--scenarios", type=_csv_list, default=None)
    parser.add_argument("--usecases", type=_csv_list, default=None)
    parser.add_argument("--policies", type=_csv_list, default=None)
    parser.add_argument("--input-sizes", type=_csv_list, default=None, help="default 10,1000")
    parser.add_argument("--concurrency", type=_csv_list, default=None, help="default 5,10")
    parser.add_argument("--amount", type=int, default=None, help="requests per run (100)")
    parser.add_argument("--time-scale", type=float, default=0.1)
    parser.add_argument("--net-scale", type=float, default=1.0)
    parser.add_argument("--heartbeat-s", type=float, default=1.0)
    parser.add_argument(
        "--accuracy",
        choices=["registered", "answered"],
        default="registered",
        help="executors register confidences[0] (the prototype) or the confidence they "
        "really answer for feature 0",
    )
    parser.add_argument("--deadline-s", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--matrix", default=None, help="an evaluation YAML to read instead")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--report", type=Path, default=None, help="only print the summary of a CSV of rows"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    options = Options(
        scenarios=args.scenarios or (["logical"] if quick else list(SCENARIOS)),
        usecases=args.usecases or list(USECASES),
        policies=args.policies or list(POLICIES),
        input_sizes=[int(s) for s in (args.input_sizes or (["10"] if quick else ["10", "1000"]))],
        concurrency=[int(c) for c in (args.concurrency or (["5"] if quick else ["5", "10"]))],
        amount=args.amount or (50 if quick else 100),
        time_scale=args.time_scale,
        net_scale=args.net_scale,
        heartbeat_s=args.heartbeat_s,
        accuracy=args.accuracy,
        deadline_s=args.deadline_s,
        seed=args.seed,
        out=args.out
        or Path(tempfile.gettempdir()) / f"bench_matrix-{time.strftime('%Y%m%d-%H%M%S')}.csv",
        matrix=args.matrix,
        report=args.report,
    )
    if options.amount < 1 or options.time_scale < 0 or options.net_scale < 0:
        parser.error("--amount must be >= 1, scales >= 0")
    return options


async def main(options: Options) -> None:
    if options.report is not None:
        saved = read_csv(options.report)
        options.policies = [p for p in POLICIES if any(r.policy == p for r in saved)]
        report(saved, options)
        return
    matrix = load_matrix(options.matrix)
    unknown = (
        set(options.scenarios) - set(matrix.scenarios)
        | set(options.usecases) - set(matrix.usecases)
        | set(options.policies) - set(POLICIES)
    )
    if unknown:
        raise SystemExit(f"unknown scenario/use case/policy: {sorted(unknown)}")
    bench = Bench(Settings(), options, matrix)
    runs = [
        (scenario, RunKey(scenario, usecase, policy, size, conc))
        for scenario in options.scenarios
        for usecase in options.usecases
        for size in options.input_sizes
        for conc in options.concurrency
        for policy in options.policies
    ]
    print(
        f"{len(runs)} runs x {options.amount} requests; time scale {options.time_scale}, "
        f"net scale {options.net_scale}, heartbeats every {options.heartbeat_s}s, "
        f"accuracy {options.accuracy}",
        flush=True,
    )
    started = time.monotonic()
    rows: list[Row] = []
    try:
        await bench.start()
        for scenario in options.scenarios:
            servers = await bench.start_nodes(scenario)
            try:
                for run_no, (_, key) in enumerate(r for r in runs if r[0] == scenario):
                    t0 = time.monotonic()
                    got = await bench.run(key, servers, run_no)
                    rows.extend(got)
                    c = summarise(got)
                    print(
                        f"  {key.scenario:<10} {key.usecase:<4} {key.policy:<17} "
                        f"size={key.input_size:<5} conc={key.concurrency:<3} "
                        f"rtt={c.rtt_mean:7.1f}ms p95={c.rtt_p95:7.1f} conf={c.confidence:.3f} "
                        f"obj={c.objective:.3f} err={c.errors} ({time.monotonic() - t0:.1f}s)",
                        flush=True,
                    )
            finally:
                for server in servers:
                    if server is not None:
                        await server.stop()
    finally:
        await bench.stop()
        if rows:
            write_csv(rows, options.out)
    report(rows, options)
    print(f"\n{len(rows)} requests in {time.monotonic() - started:.0f}s; rows in {options.out}")


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
