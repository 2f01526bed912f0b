"""The router: inference request → selection → TF Serving call → result.

Consumes ``inference-requests`` as a consumer group (scale out by adding routers; Kafka
spreads the partitions), asks the selector for a ranked list of executors over Kafka
request/reply, calls the best one's TF Serving REST API and fails over down the list
when an executor answers with a retriable error. Every accepted request gets exactly one
answer on its reply topic: a result, or an error result saying why. Each call is also
reported to the selector as an observed latency (batched, see below), which the selector
learns service times from.
What to do at each step (timeouts, selection retries, failover, the result) is decided
by :class:`~mulambda.routing.route.Route`; this worker only sends and receives.

With selection leases (``lease_slots`` > 1) one selection ranks the next requests of a
kind too (:class:`~mulambda.routing.leases.LeaseBook`): requests of a kind that arrive
while one of them asks wait for its lease, and
:class:`~mulambda.routing.executor_changes.ExecutorChanges` ends leases when the
executors they name change. Observed calls (and released lease
slots) leave batched, one ``observed-latencies`` record per executor at most every
``observation_interval_s`` (:class:`~mulambda.routing.observations.ObservationBatcher`).

Across requests the router remembers the last good ranking per kind of request
(:class:`~mulambda.routing.rankings.RankingCache`, used when a selection fails) and the
executor endpoints that refused connections lately
(:class:`~mulambda.routing.suspects.SuspectEndpoints`, tried last). Before a request is
routed its reply address is vetted (:class:`~mulambda.routing.reply_targets.ReplyTargets`):
a reply topic that is not allowed or does not exist dead-letters the request at once, a
partition out of range is answered with an error result by key. A result too large for
a Kafka record becomes an error result (:func:`~mulambda.routing.result_size.fit_result`).

Requests are consumed by a :class:`~mulambda.kafka.PipelinedConsumer`, which keeps up to
``concurrency`` requests in flight *across* fetches: a request is routed as soon as it is
read, never held back until the requests fetched with it are done. Offsets are committed
per partition up to the oldest request still in flight, so a crash redelivers unanswered
requests (at least once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mulambda.errors import DecodeError, MulambdaError, UndeliverableAnswer
from mulambda.executors.dispatch import infer_on
from mulambda.kafka import (
    Admin,
    AnswerSink,
    DeadLetterer,
    KafkaConfig,
    Membership,
    PipelinedConsumer,
    Producer,
    Record,
    TransactionalProducer,
    answer_invalid_requests,
    consumer_problem,
    producer_problem,
)
from mulambda.routing.admission import SlotAdmission
from mulambda.routing.answered import AnsweredRequests
from mulambda.routing.executor_changes import ExecutorChanges
from mulambda.routing.leases import LeaseBook
from mulambda.routing.observations import ObservationBatcher
from mulambda.routing.rankings import RankingCache, RankingKey, ranking_key
from mulambda.routing.reply_targets import (
    AllowedReplyTopics,
    Deliver,
    Misaddressed,
    ReplyTargets,
    Undeliverable,
)
from mulambda.routing.requester import Requester
from mulambda.routing.result_size import fit_result
from mulambda.routing.route import (
    CALL_MARGIN_S,
    Call,
    Finished,
    Route,
    Select,
    error_result,
    input_size_of,
)
from mulambda.routing.suspects import SuspectEndpoints
from mulambda.runtime.lifecycle import Lifecycle
from mulambda.runtime.observability import correlation_id
from mulambda.wire.catalog import Catalog, Topic
from mulambda.wire.codec import DEFAULT_MAX_RECORD_BYTES, ReplyAddress
from mulambda.wire.events import (
    Candidate,
    InferenceRequest,
    InferenceResult,
    InferenceStatus,
    LeaseAsk,
    ObservedLatencies,
    SelectionReply,
    SelectionRequest,
    deadline_in,
    new_message_id,
    utcnow,
)

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 8
"""Ranked candidates asked for per request: the failover list. More than one process
usually serves for the same traits, so a dead process leaves candidates elsewhere."""


class RouterMetrics:
    """The router's Prometheus metrics, in the worker's own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "mulambda_router_requests",
            "Inference requests by outcome (ok, error, invalid, undeliverable)",
            ["status"],
            registry=registry,
        )
        self.latency = Histogram(
            "mulambda_router_latency_seconds",
            "Receipt to result",
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.failovers = Counter(
            "mulambda_router_failovers", "Calls retried on the next candidate", registry=registry
        )
        self.overloaded = Counter(
            "mulambda_router_overloaded",
            "Requests answered with an error because no routing slot freed up in time",
            registry=registry,
        )
        self.shed = Counter(
            "mulambda_router_shed",
            "Of the overloaded requests, those answered at once: the slot queue could "
            "not reach them before their deadline",
            registry=registry,
        )
        self.in_flight = Gauge(
            "mulambda_router_in_flight", "Requests being routed now", registry=registry
        )
        self.dead_lettered = Gauge(
            "mulambda_router_dead_lettered",
            "Requests dead-lettered since start",
            registry=registry,
        )
        self.selection_retries = Counter(
            "mulambda_router_selection_retries",
            "Selections asked for again after a try failed",
            registry=registry,
        )
        self.cached_selections = Counter(
            "mulambda_router_cached_selections",
            "Requests routed on a recent ranking because their selection failed",
            registry=registry,
        )
        self.leased_selections = Counter(
            "mulambda_router_leased_selections",
            "Requests routed on a slot of a selection lease (no selection round trip)",
            registry=registry,
        )
        self.leases_ended = Counter(
            "mulambda_router_leases_ended",
            "Leases ended before their age: an executor in them failed a call, changed "
            "its registration or availability, or a new one registered for their traits",
            registry=registry,
        )
        self.suspect_endpoints = Gauge(
            "mulambda_router_suspect_endpoints",
            "Executor endpoints that refused connections lately (tried last)",
            registry=registry,
        )


class Router(Lifecycle):
    """Routes inference requests; a runner Service (start/stop/wait, ``async with``)."""

    def __init__(
        self,
        kafka: KafkaConfig,
        catalog: Catalog,
        *,
        router_id: str,
        group_id: str = "mulambda-router",
        concurrency: int = 64,
        queue_limit: int | None = None,
        selection_timeout_s: float = 2.0,
        call_timeout_s: float = 30.0,
        top_k: int = DEFAULT_TOP_K,
        call_margin_s: float = CALL_MARGIN_S,
        ranking_max_age_s: float = 30.0,
        ranking_cache_entries: int = 10_000,
        suspect_expiry_s: float = 5.0,
        reply_topics: Sequence[str] = (),
        metadata_timeout_s: float = 1.0,
        registry: CollectorRegistry | None = None,
        grace_s: float = 10.0,
        membership: Membership | None = None,
        answered: AnsweredRequests | None = None,
        publish_attempts: int = 3,
        publish_backoff_s: float = 0.5,
        delivery_timeout_s: float = 30.0,
        exactly_once: bool = False,
        transaction_timeout_s: float = 3.0,
        transaction_interval_s: float = 0.0,
        linger_ms: int = 0,
        max_request_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        lease_slots: int = 1,
        lease_max_age_s: float = 0.1,
        observation_interval_s: float = 0.05,
    ) -> None:
        """``reply_topics``: names and prefixes (ending in ``*``) results may go to;
        empty means the catalog's default (see
        :meth:`~mulambda.routing.reply_targets.AllowedReplyTopics.for_catalog`).
        ``membership``: static group membership and session timeouts of the intake;
        ``answered``: the shared filter against answering a redelivered request twice
        (None: no filter; readers then rely on ``request_id``). ``exactly_once``: results,
        error results and dead letters go out in Kafka transactions with the requests'
        offsets, at most every ``transaction_interval_s`` (0: each as soon as the one
        before is done; kafka/pipelined.py), and ``answered`` is then not needed and
        ignored; the transactional id is the group id and ``router_id``, which must
        therefore be stable across restarts of one instance and unique among instances.
        ``max_request_bytes``: larger requests are refused unread (dead-lettered).
        ``lease_slots``, ``lease_max_age_s``: selection leases (routing/leases.py), at
        most that many requests per selection, spent within that age; 1 slot: every
        request asks. ``observation_interval_s``: observed calls leave at most this often,
        one record per executor (routing/observations.py); the first after a quiet spell
        leaves at once."""
        self._kafka = kafka
        self._max_request_bytes = max_request_bytes
        self._membership = membership
        self._answered = answered
        self._publish_attempts = max(1, publish_attempts)
        self._publish_backoff_s = publish_backoff_s
        self._catalog = catalog
        self.router_id = router_id
        self._group_id = group_id
        self._concurrency = concurrency
        # Requests taken from Kafka beyond those being routed wait for a slot here, each
        # at most until its deadline: under overload every request is still answered in
        # time (with an error), and memory stays bounded by the queue.
        # A request the queue cannot reach before its deadline is answered at once
        # instead (routing/admission.py).
        self._queue_limit = queue_limit or concurrency * 16
        self._slots = asyncio.Semaphore(concurrency)
        self._admission = SlotAdmission(concurrency, margin_s=call_margin_s)
        self._selection_timeout_s = selection_timeout_s
        self._call_timeout_s = call_timeout_s
        self._top_k = top_k
        self._call_margin_s = call_margin_s
        self._grace_s = grace_s
        self.registry = registry or CollectorRegistry()
        self.metrics = RouterMetrics(self.registry)
        self._rankings = RankingCache(
            max_age_s=ranking_max_age_s, max_entries=ranking_cache_entries
        )
        self._suspects = SuspectEndpoints(expiry_s=suspect_expiry_s)
        self._leases = LeaseBook(max_slots=lease_slots, max_age_s=lease_max_age_s)
        # Requests of a kind wait for the lease one of them asked for, not ask alongside.
        self._lease_asks: dict[RankingKey, _LeaseAsked] = {}
        self._observations = ObservationBatcher(router_id=router_id)
        self._observation_interval_s = observation_interval_s
        self._observations_waiting = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._changes = (
            ExecutorChanges(kafka, catalog, self._leases, on_ended=self.metrics.leases_ended.inc)
            if self._leases.enabled
            else None
        )
        self.metrics.suspect_endpoints.set_function(
            lambda: len(self._suspects.suspects(time.time()))
        )
        self._producer = Producer(kafka, linger_ms=linger_ms, delivery_timeout_s=delivery_timeout_s)
        self._transactions = (
            TransactionalProducer(
                kafka,
                transactional_id=f"{group_id}.{router_id}",
                group_id=group_id,
                transaction_timeout_s=transaction_timeout_s,
                linger_ms=linger_ms,
            )
            if exactly_once
            else None
        )
        self._transaction_interval_s = transaction_interval_s
        if exactly_once:
            self._answered = None  # the transaction keeps answered requests from re-running
        self._results: AnswerSink = self._transactions or self._producer
        self._admin = Admin(kafka)
        self._reply_targets = ReplyTargets(
            self._admin.partition_counts,
            AllowedReplyTopics.for_catalog(catalog, reply_topics),
            timeout_s=metadata_timeout_s,
        )
        self._requester: Requester[SelectionRequest, SelectionReply] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._intake: PipelinedConsumer | None = None

    @property
    def ready(self) -> bool:
        """Consuming requests, able to produce, and able to ask for selections."""
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        """Why the router cannot route now (``/readyz`` says it), or None when it can."""
        intake, requester = self._intake, self._requester
        if intake is None or requester is None:
            return "starting"
        transactions = self._transactions
        return (
            producer_problem(self._producer.health)
            or (
                producer_problem(transactions.health, "transactions")
                if transactions is not None
                else None
            )
            or consumer_problem(intake.consumer, "request consumer", needs_assignment=True)
            or consumer_problem(requester.consumer, "selection reply consumer")
        )

    async def start(self) -> None:
        """Connect producer, cluster metadata, requester, HTTP pool, then start consuming."""
        if self._intake is not None:
            return
        try:
            if self._answered is not None:
                await self._answered.start()
            await self._producer.start()
            if self._transactions is not None:
                await self._transactions.start()
            await self._admin.start()
            await self._reply_targets.start()  # the partition counts reply addresses need
            self._requester = Requester(
                self._kafka,
                reply_model=SelectionReply,
                request_topic=self._catalog.name(Topic.SELECTION_REQUESTS),
                reply_topic=self._catalog.name(Topic.SELECTION_REPLIES),
                instance_id=self.router_id,
                producer=self._producer,
            )
            await self._requester.start()
            self._flusher = asyncio.create_task(self._flush_observations(), name="observations")
            if self._changes is not None:
                await self._changes.start()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._concurrency * 2, keepalive_timeout=30)
            )
            letters = DeadLetterer(
                self._results, self._catalog.name(Topic.DEAD_LETTERS), self._group_id
            )
            intake = PipelinedConsumer(
                self._kafka,
                {self._catalog.name(Topic.INFERENCE_REQUESTS): InferenceRequest},
                self.handle,
                group_id=self._group_id,
                membership=self._membership,
                dead_letters=letters,
                on_invalid=answer_invalid_requests(
                    self._results,
                    _invalid_result,
                    vet_address=self._invalid_reply_problem,
                    on_answered=self.metrics.requests.labels("invalid").inc,
                ),
                max_record_bytes=self._max_request_bytes,
                concurrency=self._concurrency + self._queue_limit,
                grace_s=self._grace_s,
                transactions=self._transactions,
                commit_interval_s=(
                    self._transaction_interval_s if self._transactions is not None else 0.2
                ),
            )
            await intake.start()
            self.metrics.dead_lettered.set_function(lambda: intake.stats.dead_lettered)
            self._intake = intake
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop consuming, finish in-flight requests within the grace period, close."""
        intake, self._intake = self._intake, None
        if intake is not None:
            await intake.stop()
        requester, self._requester = self._requester, None
        if requester is not None:
            await requester.stop()
        if self._changes is not None:
            await self._changes.stop()
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            self._leases.end_all()
            await self._send_observations()  # what the routed requests taught, released slots
        await self._reply_targets.stop()
        await self._admin.stop()
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        if self._transactions is not None:
            await self._transactions.stop()
        await self._producer.stop()
        if self._answered is not None:
            await self._answered.stop()

    async def wait(self) -> None:
        """Return when the consumer ends (it only does on failure), raising why."""
        done = self._intake.done if self._intake is not None else None
        if done is not None:
            # Not ``await done``: the runner cancels this waiter on SIGTERM, and that
            # must not cancel the consumer, which stop() then drains.
            await asyncio.wait([done])
            if not done.cancelled():
                done.result()

    # --- routing ------------------------------------------------------------------

    async def handle(self, record: Record[Any]) -> None:
        """Route one request and publish exactly one result for it.

        A request whose result was already delivered (a redelivery after a crash or a
        rebalance) is skipped. The route runs once: a publish that fails is retried with
        the same result, never by routing again, and a result Kafka will not take at all
        dead-letters the request with the reason.
        """
        request = record.value
        if not isinstance(request, InferenceRequest):
            raise DecodeError("inference request without a body")
        if self._answered is not None and await self._answered.seen(request.message_id):
            self.metrics.requests.labels("redelivered").inc()
            log.info("request %s was answered already; skipped", request.message_id)
            return
        token = correlation_id.set(request.correlation_id)
        started = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            target = await self._reply_target(request)  # raises UndeliverableAnswer
            if isinstance(target, Misaddressed):
                result = error_result(request.correlation_id, target.reason)
            else:
                result = await self._route_when_admitted(request)
            result = result.model_copy(
                update={
                    "latency_ms": (time.perf_counter() - started) * 1000,
                    "request_id": request.message_id,
                }
            )
            result = fit_result(result)
            if result.executor_id is not None and result.call_ms is not None:
                await self._observe(request, result.executor_id, result.call_ms)
            await self._publish(request, result, target.partition)
            self.metrics.requests.labels(result.status.value).inc()
            self.metrics.latency.observe(time.perf_counter() - started)
        finally:
            self.metrics.in_flight.dec()
            correlation_id.reset(token)
        if self._answered is not None:
            await self._answered.mark(request.message_id, request.deadline)

    async def _publish(
        self, request: InferenceRequest, result: InferenceResult, partition: int | None
    ) -> None:
        """Deliver ``result`` to the request's reply topic (``partition`` as vetted),
        retrying only the send."""
        for attempt in range(1, self._publish_attempts + 1):
            try:
                await self._results.send_and_wait(
                    request.reply_topic,
                    result,
                    key=request.correlation_id,
                    partition=partition,
                )
                return
            except MulambdaError as exc:
                if not exc.retriable or attempt == self._publish_attempts:
                    raise UndeliverableAnswer(
                        f"result not delivered to {request.reply_topic} "
                        f"after {attempt} attempt(s): {exc.reason}"
                    ) from exc
                log.warning("result publish failed (attempt %d), retrying: %s", attempt, exc)
                await asyncio.sleep(self._publish_backoff_s * attempt)

    async def _invalid_reply_problem(self, address: ReplyAddress) -> str | None:
        """Why an invalid request's error result cannot go to ``address`` (it is then
        dead-lettered), or None: the same vetting as valid requests get."""
        verdict = await self._reply_targets.verdict(address.topic, address.partition)
        return None if isinstance(verdict, Deliver) else verdict.reason

    async def _reply_target(self, request: InferenceRequest) -> Deliver | Misaddressed:
        """Where the result of ``request`` goes; UndeliverableAnswer (the request is
        dead-lettered with the reason) when nobody can be answered there."""
        verdict = await self._reply_targets.verdict(request.reply_topic, request.reply_partition)
        if isinstance(verdict, Undeliverable):
            self.metrics.requests.labels("undeliverable").inc()
            raise UndeliverableAnswer(verdict.reason)
        if isinstance(verdict, Misaddressed):
            log.warning("request %s: %s", request.message_id, verdict.reason)
        return verdict

    async def _route_when_admitted(self, request: InferenceRequest) -> InferenceResult:
        """Route once one of the ``concurrency`` slots is free; an error result at once
        when every slot is busy and the queue is not expected to reach the request before
        its deadline, and when none frees up before the deadline (minus the margin an
        answer needs) after all."""
        admission = self._admission
        remaining_s = (request.deadline - utcnow()).total_seconds()
        if remaining_s <= 0:
            # Answered without I/O ("deadline passed before the request was routed"):
            # no slot needed, and its instant route must not count as a slot's hold.
            return await self.route(request)
        if self._slots.locked():
            shed = admission.shed(remaining_s)
            if shed is not None:
                self.metrics.overloaded.inc()
                self.metrics.shed.inc()
                return error_result(request.correlation_id, shed.reason)
        admission.waiting += 1
        try:
            async with asyncio.timeout(max(0.0, remaining_s - self._call_margin_s)):
                await self._slots.acquire()
        except TimeoutError:
            self.metrics.overloaded.inc()
            return error_result(
                request.correlation_id,
                f"router overloaded: no routing slot free before the deadline "
                f"({self._concurrency} requests being routed)",
            )
        finally:
            admission.waiting -= 1
        started = time.monotonic()
        try:
            return await self.route(request)
        finally:
            self._slots.release()
            admission.held(time.monotonic() - started)

    async def route(self, request: InferenceRequest) -> InferenceResult:
        """Select and call; never raises for request-level problems, returns an error."""
        route = Route(
            request,
            selection_timeout_s=self._selection_timeout_s,
            call_timeout_s=self._call_timeout_s,
            call_margin_s=self._call_margin_s,
            rankings=self._rankings,
            suspects=self._suspects,
        )
        while True:
            step = route.step
            if isinstance(step, Finished):
                if step.result.selection == "cached":
                    self.metrics.cached_selections.inc()
                elif step.result.selection == "leased":
                    self.metrics.leased_selections.inc()
                return step.result
            if isinstance(step, Select):
                if step.delay_s > 0:
                    await asyncio.sleep(step.delay_s)
                if route.selection_tries > 1:
                    self.metrics.selection_retries.inc()
                leased = self._leases.take(request, time.monotonic())
                if leased is not None:
                    route.leased(leased)
                    continue
                try:
                    reply = await self._select_leasing(request, step.input_size, step.timeout_s)
                except MulambdaError as exc:
                    route.selection_failed(exc)
                else:
                    if isinstance(reply, tuple):
                        route.leased(reply)
                    else:
                        route.selected(reply)
            else:
                await self._call(route, step)

    async def _call(self, route: Route, call: Call) -> None:
        """Make ``call`` and report its outcome to ``route``."""
        request, candidate = route.request, call.candidate
        called = time.perf_counter()
        try:
            # In the candidate's protocol; the output comes back in the request's dialect.
            output = await infer_on(
                candidate.protocol,
                candidate.endpoint,
                self._session,
                request.verb,
                candidate.model_name,
                request.body,
                version=candidate.model_version,
                timeout_s=call.timeout_s,
            )
        except MulambdaError as exc:
            log.info("executor %s failed: %s", candidate.executor_id, exc.reason)
            if call.attempt == 1 and route.selection in ("fresh", "leased"):
                # The dispatch the selector counted as load is over: say so, or it keeps
                # counting until its pending timeout (selection/view.py, Load).
                failed_ms = (time.perf_counter() - called) * 1000
                await self._observe(request, candidate.executor_id, failed_ms, failed=True)
            if self._leases.end(candidate.executor_id):
                self.metrics.leases_ended.inc()
            if route.call_failed(exc):
                self.metrics.failovers.inc()
            return
        route.call_succeeded(output, (time.perf_counter() - called) * 1000)

    async def _select_leasing(
        self, request: InferenceRequest, size: int, timeout_s: float
    ) -> SelectionReply | tuple[Candidate, ...]:
        """A selection for ``request``, asking for a lease when its kind is in demand;
        while one request of a kind asks, the others wait for its lease (at most
        ``timeout_s``) and take a slot of it, or ask themselves when none is left."""
        if not self._leases.enabled:
            return await self._select(request, size, timeout_s)
        key = ranking_key(request)
        asking = self._lease_asks.get(key)
        # Wait only for a slot the lease being asked for will have: a request that
        # waited in vain would pay two selection round trips.
        if asking is not None and asking.spare > 0:
            asking.spare -= 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await asyncio.shield(asking.done)
            leased = self._leases.take(request, time.monotonic())
            if leased is not None:
                return leased
        ask = self._leases.ask(request, time.monotonic())
        if ask is None:
            return await self._select(request, size, timeout_s)
        mine = _LeaseAsked(asyncio.get_running_loop().create_future(), ask.slots - 1)
        self._lease_asks[key] = mine
        try:
            reply = await self._select(request, size, timeout_s, lease=ask)
            self._leases.grant(request, reply, time.monotonic())
            return reply
        finally:
            mine.done.set_result(None)
            if self._lease_asks.get(key) is mine:
                del self._lease_asks[key]

    async def _select(
        self,
        request: InferenceRequest,
        size: int,
        timeout_s: float,
        *,
        lease: LeaseAsk | None = None,
    ) -> SelectionReply:
        requester = self._requester
        if requester is None:
            raise MulambdaError("router is not started")
        # A new id per try, never the client's: two requests with one correlation id may
        # be in flight at once, and a late reply to a failed try must not answer the next.
        selection = SelectionRequest(
            correlation_id=new_message_id(),
            reply_topic=requester.reply_topic,
            reply_partition=requester.reply_partition,
            deadline=deadline_in(timeout_s),
            client_id=request.client_id,
            traits=request.traits,
            weights=request.weights,
            input_size=size,
            slo=request.slo,
            policy=request.policy,
            top_k=self._top_k,
            # The adaptive policy leaves out executors that cannot answer by then, and
            # answers at once when none can.
            answer_by=request.deadline,
            lease=lease,
        )
        return await requester.request(selection, key=request.client_id, timeout_s=timeout_s)

    async def _observe(
        self,
        request: InferenceRequest,
        executor_id: str,
        elapsed_ms: float,
        *,
        failed: bool = False,
    ) -> None:
        """Queue the observed call for the next batch (routing/observations.py)."""
        full = self._observations.observed(
            executor_id, request.client_id, elapsed_ms, input_size_of(request), failed=failed
        )
        if full is not None:
            await self._send_observation(full)
        self._observations_waiting.set()

    async def _flush_observations(self) -> None:
        """Send the batched observations when there are some, at most once per interval
        (the first after a quiet spell at once); end expired leases meanwhile, so their
        unused slots are released."""
        leases = self._leases
        wake_s = leases.max_age_s if leases.enabled else None
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wake_s):
                    await self._observations_waiting.wait()
            self._observations_waiting.clear()
            leases.expire(time.monotonic())
            await self._send_observations()
            await asyncio.sleep(self._observation_interval_s)

    async def _send_observations(self) -> None:
        for executor_id, count in self._leases.take_released():
            self._observations.released(executor_id, count)
        for batch in self._observations.drain():
            await self._send_observation(batch)

    async def _send_observation(self, batch: ObservedLatencies) -> None:
        # Fire and forget: the results matter more than the feedback, and the producer
        # retries on its own. A failure here must not fail (and so re-route) a request
        # that was answered.
        topic = self._catalog.name(Topic.OBSERVED_LATENCIES)
        try:
            delivery = await self._producer.send(topic, batch, key=batch.executor_id)
        except MulambdaError as exc:
            log.warning("observed calls of %s not published: %s", batch.executor_id, exc.reason)
            return
        delivery.add_done_callback(_log_failed_delivery)


@dataclass(slots=True)
class _LeaseAsked:
    """A lease being asked for: done when its reply came (or did not), and how many more
    requests of its kind may wait for one of its slots."""

    done: asyncio.Future[None]
    spare: int


def _invalid_result(address: ReplyAddress, exc: DecodeError) -> InferenceResult:
    """The answer to an invalid request whose reply address is readable: the client is
    waiting for it (a request without one is dead-lettered)."""
    return InferenceResult(
        correlation_id=address.correlation_id,
        request_id=address.message_id,
        status=InferenceStatus.ERROR,
        error=exc.reason,
        attempts=0,
    )


def _log_failed_delivery(delivery: asyncio.Future[Any]) -> None:
    # Retrieve the exception so asyncio does not report it as never retrieved.
    if not delivery.cancelled() and delivery.exception() is not None:
        log.warning("observed latency not delivered: %s", delivery.exception())
