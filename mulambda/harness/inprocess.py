"""The real request path in one process, for evaluations: Kafka, Redis, selector, router,
synthetic executors on emulated nodes, and a client that times every request.

:class:`InProcessPlatform` runs a :class:`~mulambda.selection.selector.Selector` and a
:class:`~mulambda.routing.router.Router` against the Kafka and Redis it is given, under a
topic prefix and Redis key prefix of its own (deleted at stop), so it can share servers
with tests and other benchmarks. Every request takes the real path: inference-requests →
router → selection request/reply → executor over TF Serving REST → inference-results.

Nodes are :class:`~mulambda.emulator.server.ExecutorServer`\\ s whose ``network_delay_ms``
is the node's delay; their models are :class:`RecordingModel`\\ s, synthetic models that
note, for each request that names itself in its body (``"request": tag`` in the first
instance), how many requests every executor of the run was serving and queueing when it
arrived, and how long it took to answer: what an oracle needs and no policy gets.

A *run* registers the nodes' models under executor ids and traits of its own
(:meth:`InProcessPlatform.register`: so every run starts cold), publishes the
client→executor probe latency of each (what a companion would measure: the node's delay)
and, optionally, emulated companion heartbeats with each model's in-flight count; it ends
with :meth:`InProcessPlatform.finish`, which waits until the executors are idle and
deregisters them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mulambda.emulator import ExecutorServer, SyntheticModel
from mulambda.emulator.profiles import SyntheticProfile
from mulambda.harness.evaluation import Load, Offer
from mulambda.harness.readers import TopicReader
from mulambda.kafka import Admin, KafkaConfig, Producer
from mulambda.routing.router import Router
from mulambda.runtime.lifecycle import Lifecycle
from mulambda.selection.policies import PolicyState
from mulambda.selection.selector import Selector
from mulambda.selection.store import ViewStore
from mulambda.wire.catalog import Catalog, Topic, load_catalog
from mulambda.wire.events import (
    ExecutorRegistration,
    ExecutorStatus,
    InferenceRequest,
    InferenceResult,
    LatencyMeasurement,
    LatencySource,
    ModelState,
    Slo,
    SoftWeights,
    Traits,
    deadline_in,
)

log = logging.getLogger(__name__)

CLIENT = "bench-client"
"""The client id of every request (the probes are measured to it)."""


@dataclass(frozen=True, slots=True)
class Node:
    """An emulated node: the profiles of the models it serves and its network delay."""

    profiles: tuple[SyntheticProfile, ...]
    delay_ms: float


@dataclass(frozen=True, slots=True)
class Dispatch:
    """What a request met at its executor: everyone's load, then its own service time."""

    executor_id: str
    loads: dict[str, Load]
    service_ms: float = float("nan")


class Recorder:
    """The current run's executors, and per request tag the :class:`Dispatch` it met."""

    def __init__(self) -> None:
        self.placements: dict[str, Placement] = {}
        self.dispatches: dict[str, Dispatch] = {}
        self._executor_of: dict[int, str] = {}

    def begin(self, placements: Mapping[str, Placement]) -> None:
        """A new run: forget the last one's executors and dispatches."""
        self.placements = dict(placements)
        self._executor_of = {id(p.model): eid for eid, p in placements.items()}
        self.dispatches = {}

    def loads(self) -> dict[str, Load]:
        """Every executor's load now."""
        return {eid: Load(p.model.serving, p.model.waiting) for eid, p in self.placements.items()}

    def arrived(self, tag: str, model: RecordingModel) -> None:
        executor_id = self._executor_of.get(id(model))
        if executor_id is not None:
            self.dispatches[tag] = Dispatch(executor_id, self.loads())

    def answered(self, tag: str, service_ms: float) -> None:
        dispatch = self.dispatches.get(tag)
        if dispatch is not None:
            self.dispatches[tag] = Dispatch(dispatch.executor_id, dispatch.loads, service_ms)


def _request_tag(payload: Any) -> str | None:
    if isinstance(payload, list) and payload and isinstance(payload[0], dict):
        tag = payload[0].get("request")
        return tag if isinstance(tag, str) else None
    return None


class RecordingModel(SyntheticModel):
    """A synthetic model that reports each tagged request to a :class:`Recorder`."""

    def __init__(
        self, profile: SyntheticProfile, recorder: Recorder, *, time_scale: float, seed: int
    ) -> None:
        super().__init__(profile, time_scale=time_scale, seed=seed)
        self._recorder = recorder

    async def predict(self, signature_name: str, payload: Any, *, row: bool) -> Any:
        """Note the load met (before this request counts), answer, note the service time."""
        tag = _request_tag(payload) if row else None
        started = time.perf_counter()
        if tag is not None:
            self._recorder.arrived(tag, self)
        try:
            return await super().predict(signature_name, payload, row=row)
        finally:
            if tag is not None:
                self._recorder.answered(tag, (time.perf_counter() - started) * 1000)


@dataclass
class Placement:
    """An executor of the current run: where it runs, what it serves, what it is credited."""

    executor_id: str
    node: int
    profile: SyntheticProfile
    model: RecordingModel
    net_ms: float
    accuracy: float

    def offer(self) -> Offer:
        return Offer(self.executor_id, self.profile, self.net_ms, self.accuracy)


@dataclass
class Outcome:
    """One request's fate as the client saw it."""

    tag: str
    rtt_ms: float = float("nan")
    result: InferenceResult | None = None
    error: str = ""
    dispatch: Dispatch | None = None


@dataclass
class _Waiters:
    futures: dict[str, asyncio.Future[tuple[float, InferenceResult]]] = field(default_factory=dict)

    def on_record(self, payload: Mapping[str, Any], now: float) -> None:
        future = self.futures.pop(str(payload.get("correlation_id")), None)
        if future is None or future.done():
            return
        try:
            future.set_result((now, InferenceResult.model_validate(payload)))
        except ValueError as exc:  # why: a malformed result is that request's error
            future.set_exception(exc)


class InProcessPlatform(Lifecycle):
    """Selector, router, client producer and result reader over a private prefix."""

    def __init__(
        self,
        kafka: KafkaConfig,
        redis_url: str,
        *,
        name: str = "bench-eval",
        seed: int = 1,
        call_timeout_s: float = 60.0,
        lease_slots: int = 1,
        lease_max_age_s: float = 0.1,
    ) -> None:
        """``lease_slots``, ``lease_max_age_s``: the router's selection leases (1 slot:
        none)."""
        tag = uuid.uuid4().hex[:8]
        self.tag = tag
        self.kafka = kafka
        self.catalog: Catalog = load_catalog(f"{name}-{tag}.")
        self.redis_url = redis_url
        self.key_prefix = f"{name}-{tag}:"
        self.recorder = Recorder()
        self.selector = Selector(
            kafka,
            self.catalog,
            ViewStore(redis_url, key_prefix=self.key_prefix),
            selector_id=f"{name}-selector-{tag}",
            group_id=f"{name}-selector-{tag}",
            state=PolicyState(random.Random(seed)),  # noqa: S311 - the random policy's draws
        )
        self.router = Router(
            kafka,
            self.catalog,
            router_id=f"{name}-router-{tag}",
            group_id=f"{name}-router-{tag}",
            concurrency=256,
            selection_timeout_s=5.0,
            call_timeout_s=call_timeout_s,
            lease_slots=lease_slots,
            lease_max_age_s=lease_max_age_s,
        )
        self.producer = Producer(kafka)
        self._waiters = _Waiters()
        self.reader = TopicReader(
            kafka.bootstrap_servers,
            self.catalog.name(Topic.INFERENCE_RESULTS),
            self._waiters.on_record,
            clock=time.perf_counter,
        )
        self._admin = Admin(kafka)
        self._servers: list[ExecutorServer | None] = []
        self._nodes: list[Node] = []
        self._runs = 0
        self._started = False

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        await self._admin.start()
        await self._admin.apply(self.catalog)
        await self.producer.start()
        await self.selector.start()
        await self.router.start()
        await self.reader.start()
        await self._wait_answering()

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        await self.stop_nodes()
        for step in (self.reader.stop, self.router.stop, self.selector.stop, self.producer.stop):
            try:
                await step()
            except Exception as exc:  # why: clean up the rest regardless
                log.warning("cleanup step failed: %r", exc)
        try:
            async with ViewStore(self.redis_url, key_prefix=self.key_prefix) as store:
                await store.clear()
            await self._admin.delete([self.catalog.name(t) for t in Topic])
        finally:
            await self._admin.stop()

    # --- requests ----------------------------------------------------------------------

    def request(
        self,
        traits: Traits,
        weights: SoftWeights,
        *,
        policy: str | None,
        input_size: int,
        deadline_s: float,
        slo: Slo | None = None,
    ) -> InferenceRequest:
        """A request for feature 0 with ``input_size`` elements, tagged with its
        correlation id so its executor records what it met."""
        correlation_id = uuid.uuid4().hex
        return InferenceRequest(
            correlation_id=correlation_id,
            reply_topic=self.catalog.name(Topic.INFERENCE_RESULTS),
            deadline=deadline_in(deadline_s),
            client_id=CLIENT,
            traits=traits,
            weights=weights,
            policy=policy,
            slo=slo,
            body={
                "instances": [{"feature": 0, "data": [0] * input_size, "request": correlation_id}]
            },
            input_size=input_size,
        )

    async def send(self, request: InferenceRequest, wait_s: float) -> Outcome:
        """Publish ``request`` and wait up to ``wait_s`` for its result."""
        tag = request.correlation_id
        future: asyncio.Future[tuple[float, InferenceResult]] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiters.futures[tag] = future
        outcome = Outcome(tag)
        sent = time.perf_counter()
        try:
            await self.producer.send_and_wait(
                self.catalog.name(Topic.INFERENCE_REQUESTS), request, key=CLIENT
            )
            received, outcome.result = await asyncio.wait_for(future, wait_s)
            outcome.rtt_ms = (received - sent) * 1000
        except Exception as exc:  # why: a lost request is a data point, not a crash
            self._waiters.futures.pop(tag, None)
            outcome.error = f"no result: {exc!r}"[:200]
        outcome.dispatch = self.recorder.dispatches.get(tag)
        return outcome

    async def _wait_answering(self) -> None:
        """Until a request makes the whole trip (router, selector, results)."""
        deadline = time.monotonic() + 60
        traits = Traits(model_type="warm-up", input_format="none", output_format="none")
        while True:
            request = self.request(traits, SoftWeights(), policy=None, input_size=1, deadline_s=10)
            outcome = await self.send(request, 10)
            # Any answer but a selection timeout means the selector answered.
            result = outcome.result
            if result is not None and "selection failed" not in (result.error or ""):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the selector never answered: {outcome}")
            await asyncio.sleep(0.2)

    # --- nodes and runs ----------------------------------------------------------------

    async def start_nodes(self, nodes: Sequence[Node], *, time_scale: float, seed: int) -> None:
        """Replace the running nodes by ``nodes`` (an empty node gets no server)."""
        await self.stop_nodes()
        self._nodes = list(nodes)
        for index, node in enumerate(nodes):
            if not node.profiles:
                self._servers.append(None)
                continue
            models = {
                p.name: RecordingModel(
                    p, self.recorder, time_scale=time_scale, seed=seed * 1000 + index * 10 + i
                )
                for i, p in enumerate(node.profiles)
            }
            server = ExecutorServer("127.0.0.1", 0, models, network_delay_ms=node.delay_ms)
            await server.start()
            await server.wait_loaded(10)
            self._servers.append(server)

    async def stop_nodes(self) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            if server is not None:
                await server.stop()

    async def register(
        self,
        *,
        accuracy: Callable[[SyntheticProfile], float],
        delay_per_element_ms: Callable[[SyntheticProfile], float],
        heartbeat_s: float,
        only: Iterable[str] | None = None,
    ) -> tuple[Traits, dict[str, Placement]]:
        """Register the nodes' models (those named in ``only``, if given) as a new run's
        executors under fresh traits; returns the traits and the placements."""
        run = self._runs
        self._runs += 1
        wanted = None if only is None else set(only)
        traits = Traits(
            model_type=f"run-{run}-{self.tag}", input_format="synthetic", output_format="confidence"
        )
        placements: dict[str, Placement] = {}
        deliveries = []
        topic = self.catalog.name(Topic.EXECUTOR_REGISTRATIONS)
        for index, (node, server) in enumerate(zip(self._nodes, self._servers, strict=True)):
            if server is None:
                continue
            for profile in node.profiles:
                if wanted is not None and profile.name not in wanted:
                    continue
                executor_id = f"{self.tag}-r{run}-n{index}-{profile.name}"
                model = server.models[profile.name][0]
                if not isinstance(model, RecordingModel):
                    raise TypeError(f"{profile.name} is not a recording model")
                placements[executor_id] = Placement(
                    executor_id, index, profile, model, node.delay_ms, accuracy(profile)
                )
                registration = ExecutorRegistration(
                    executor_id=executor_id,
                    model_name=profile.name,
                    traits=traits,
                    accuracy=accuracy(profile),
                    endpoint=server.url,
                    model_data_delay_ms_per_element=delay_per_element_ms(profile),
                    node=f"node-{index}",
                    # Without heartbeats the registration alone must keep it live.
                    heartbeat_interval_s=heartbeat_s or 3600,
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
                    latency_ms=p.net_ms,
                    source=LatencySource.PROBE,
                ),
                key=p.executor_id,
            )
            for p in placements.values()
        ]
        await asyncio.gather(*deliveries)
        await self._wait_view(placements, probes=True)
        self.recorder.begin(placements)
        return traits, placements

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

    @contextlib.asynccontextmanager
    async def heartbeats(
        self, placements: Mapping[str, Placement], interval_s: float
    ) -> AsyncIterator[None]:
        """Emulated companions while inside: each model's in-flight count every
        ``interval_s`` (nothing when it is 0)."""
        task = (
            asyncio.create_task(self._beat(list(placements.values()), interval_s))
            if interval_s > 0
            else None
        )
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _beat(self, placements: list[Placement], interval_s: float) -> None:
        topic = self.catalog.name(Topic.EXECUTOR_STATUS)
        while True:
            for p in placements:
                status = ExecutorStatus(
                    executor_id=p.executor_id,
                    model_state=ModelState.AVAILABLE,
                    in_flight=p.model.in_flight,
                    heartbeat_interval_s=interval_s,
                )
                await self.producer.send(topic, status, key=p.executor_id)
            await asyncio.sleep(interval_s)

    async def finish(self, placements: Mapping[str, Placement], timeout_s: float = 120) -> None:
        """Wait until no executor serves anything (calls the router gave up on
        included), for at most ``timeout_s``, then deregister the run's executors.

        A run that leaves executors busy should start the next on fresh nodes
        (:meth:`start_nodes` stops the old servers and what they still serve)."""
        deadline = time.monotonic() + timeout_s
        while any(p.model.in_flight for p in placements.values()):
            if time.monotonic() > deadline:
                log.info("executors still busy after the run")
                break
            await asyncio.sleep(0.05)
        topic = self.catalog.name(Topic.EXECUTOR_REGISTRATIONS)
        deliveries = [await self.producer.send(topic, None, key=eid) for eid in placements]
        await asyncio.gather(*deliveries)
