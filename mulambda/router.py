"""The router: inference request → selection → TF Serving call → result.

Consumes ``inference-requests`` as a consumer group (scale out by adding routers; Kafka
spreads the partitions), asks the selector for a ranked list of executors over Kafka
request/reply, calls the best one's TF Serving REST API and fails over down the list
when an executor answers with a retriable error. Every accepted request gets exactly one
answer on its reply topic: a result, or an error result saying why. Each successful call
is also published as an observed latency, which the selector learns service times from.

Requests are consumed by :class:`_Intake`, which keeps up to ``concurrency`` requests in
flight *across* fetches: a request is routed as soon as it is read, never held back until
the requests fetched with it are done. Offsets are committed per partition up to the
oldest request still in flight, so a crash redelivers unanswered requests (at least once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mulambda.codec import DEFAULT_MAX_RECORD_BYTES, decode, peek_reply_address
from mulambda.errors import DecodeError, ExecutorError, MulambdaError
from mulambda.events import (
    InferenceRequest,
    InferenceResult,
    InferenceStatus,
    LatencyMeasurement,
    LatencySource,
    SelectionReply,
    SelectionRequest,
    SelectionStatus,
    deadline_in,
    utcnow,
)
from mulambda.kafka import DeadLetterer, KafkaConfig, Producer, Record, start_bounded
from mulambda.lifecycle import Lifecycle
from mulambda.observability import correlation_id
from mulambda.requester import Requester
from mulambda.tfserving import TFServingClient
from mulambda.topics import Catalog, Topic

log = logging.getLogger(__name__)


def input_size_of(request: InferenceRequest) -> int:
    """Elements in the request's input: the explicit size, else rows in the body."""
    if request.input_size is not None:
        return request.input_size
    body = request.body
    for key in ("instances", "examples"):
        rows = body.get(key)
        if isinstance(rows, list):
            return len(rows)
    inputs = body.get("inputs")
    if isinstance(inputs, dict):
        first = next(iter(inputs.values()), None)
        return len(first) if isinstance(first, list) else 1
    return len(inputs) if isinstance(inputs, list) else 1


class RouterMetrics:
    """The router's Prometheus metrics, in the worker's own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "mulambda_router_requests",
            "Inference requests by outcome (ok, error, invalid)",
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
        self.in_flight = Gauge(
            "mulambda_router_in_flight", "Requests being routed now", registry=registry
        )
        self.dead_letters = Counter(
            "mulambda_router_dead_letters", "Requests dead-lettered", registry=registry
        )


_RecordHandler = Callable[[Record[Any]], Awaitable[None]]
_InvalidHandler = Callable[[ConsumerRecord, DecodeError], Awaitable[bool]]


class _Intake(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Group consumer that routes each record as soon as it is read.

    :class:`mulambda.kafka.ConsumerLoop` fetches the next batch only after every record
    of the current one was handled, so a request fetched alongside a slow one waits for
    it; for a router, whose requests take as long as the executors do, that doubles
    round trips under steady load. Here up to ``concurrency`` records are in flight
    regardless of how they were fetched.

    At least once: per partition, the committed offset is the lowest offset still in
    flight (or past the last fetched record when none is), so nothing is committed
    before it was answered or dead-lettered. Retriable handler errors are retried with
    backoff; then, or for other errors, the record is dead-lettered, except while
    stopping, when a retriable failure is left uncommitted for the next owner. On a
    rebalance the records of revoked partitions are finished (within ``grace_s``) and
    committed first.
    """

    def __init__(
        self,
        config: KafkaConfig,
        topic: str,
        handler: _RecordHandler,
        *,
        group_id: str,
        dead_letters: DeadLetterer,
        on_invalid: _InvalidHandler | None,
        on_dead_letter: Callable[[], None] | None = None,
        concurrency: int,
        grace_s: float,
        max_retries: int = 3,
        retry_backoff_s: float = 0.2,
        commit_interval_s: float = 0.2,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        self._config = config
        self._topic = topic
        self._handler = handler
        self._group_id = group_id
        self._letters = dead_letters
        self._on_invalid = on_invalid
        self._on_dead_letter = on_dead_letter
        self._concurrency = max(1, concurrency)
        self._grace_s = grace_s
        self._max_retries = max_retries
        self._retry_backoff_s = retry_backoff_s
        self._commit_interval_s = commit_interval_s
        self._max_record_bytes = max_record_bytes
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._freed = asyncio.Event()
        self._tasks: dict[asyncio.Task[None], TopicPartition] = {}
        self._pending: dict[TopicPartition, set[int]] = {}
        """Offsets being handled, or whose handling failed (never committed past)."""
        self._fetched: dict[TopicPartition, int] = {}
        """Offset after the last record taken into work, per partition."""
        self._committed: dict[TopicPartition, int] = {}
        self._last_commit = 0.0

    @property
    def done(self) -> asyncio.Task[None] | None:
        """The fetch task; it ends only on stop or failure."""
        return self._task

    @property
    def in_flight(self) -> int:
        """Records being handled now."""
        return len(self._tasks)

    async def start(self) -> None:
        """Connect, subscribe and begin fetching in a background task."""
        if self._consumer is not None:
            return
        consumer = AIOKafkaConsumer(
            **self._config.client_kwargs(),
            group_id=self._group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=self._max_record_bytes + 65536,
            fetch_max_wait_ms=100,
        )
        await start_bounded(consumer, "router consumer", self._config.request_timeout_s)
        consumer.subscribe([self._topic], listener=self)
        self._stopping.clear()
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(consumer), name="mulambda-router-intake")

    async def stop(self) -> None:
        """Stop fetching, let in-flight records finish within the grace, commit, close."""
        consumer, task = self._consumer, self._task
        self._consumer, self._task = None, None
        if consumer is None:
            return
        self._stopping.set()
        if task is not None:
            # asyncio.wait, not await: it neither raises what ended the task nor, should
            # stop() itself be cancelled, cancels the task. The loop ends within a fetch.
            await asyncio.wait([task])
            if not task.cancelled() and task.exception() is not None:
                log.error("router intake failed", exc_info=task.exception())
        if self._tasks:
            _, late = await asyncio.wait(list(self._tasks), timeout=self._grace_s)
            if late:
                # Their offsets stay pending, hence uncommitted: the next owner redoes them.
                log.warning("%d request(s) unfinished after %.1fs grace", len(late), self._grace_s)
                for straggler in late:
                    straggler.cancel()
                await asyncio.gather(*late, return_exceptions=True)
        await self._commit(consumer, force=True)
        with contextlib.suppress(KafkaError, OSError):
            await consumer.stop()

    # --- rebalance listener ---------------------------------------------------------

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        """Finish and commit the revoked partitions' records before the new owner starts."""
        gone = set(revoked)
        tasks = [t for t, tp in self._tasks.items() if tp in gone]
        if tasks:
            await asyncio.wait(tasks, timeout=self._grace_s)
        consumer = self._consumer
        if consumer is not None:
            await self._commit(consumer, force=True, only=gone)
        for tp in gone:
            self._pending.pop(tp, None)
            self._fetched.pop(tp, None)
            self._committed.pop(tp, None)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        """Nothing to load: positions come from the group's committed offsets."""

    # --- fetching -------------------------------------------------------------------

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        while not self._stopping.is_set():
            self._freed.clear()  # before counting, so no completion is missed
            free = self._concurrency - len(self._tasks)
            if free <= 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._freed.wait(), self._commit_interval_s)
                await self._commit(consumer)
                continue
            try:
                batches = await consumer.getmany(timeout_ms=200, max_records=free)
            except KafkaError as exc:
                log.warning("fetch failed, retrying: %s", exc)
                await asyncio.sleep(self._retry_backoff_s)
                continue
            if self._stopping.is_set():
                break  # not taken into work, so not committed: redelivered
            for tp, records in batches.items():
                for raw in records:
                    self._spawn(tp, raw)
            await self._commit(consumer)

    def _spawn(self, tp: TopicPartition, raw: ConsumerRecord) -> None:
        pending = self._pending.setdefault(tp, set())
        pending.add(raw.offset)
        self._fetched[tp] = raw.offset + 1
        task = asyncio.create_task(self._process(pending, raw))
        self._tasks[task] = tp
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self._freed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("router task failed", exc_info=task.exception())

    async def _process(self, pending: set[int], raw: ConsumerRecord) -> None:
        if await self._handle_raw(raw):
            pending.discard(raw.offset)

    async def _handle_raw(self, raw: ConsumerRecord) -> bool:
        """Handle one record; True once it was answered or dead-lettered."""
        try:
            value = decode(InferenceRequest, raw.value, max_bytes=self._max_record_bytes)
        except DecodeError as exc:
            if self._on_invalid is not None:
                try:
                    if await self._on_invalid(raw, exc):
                        return True
                except Exception as reply_exc:  # why: an unusable reply address; dead-letter
                    log.warning("error reply to an invalid request failed: %r", reply_exc)
            return await self._dead_letter(raw, exc)
        record: Record[Any] = Record(
            topic=raw.topic,
            partition=raw.partition,
            offset=raw.offset,
            key=raw.key,
            value=value,
            headers=dict(raw.headers or ()),
            timestamp_ms=raw.timestamp,
            raw=raw.value,
        )
        attempt = 0
        while True:
            try:
                await self._handler(record)
            except MulambdaError as exc:
                if exc.retriable and self._stopping.is_set():
                    log.warning("left for redelivery while stopping: %s", exc.reason)
                    return False
                if exc.retriable and attempt < self._max_retries:
                    attempt += 1
                    await asyncio.sleep(self._retry_backoff_s * 2 ** (attempt - 1))
                    continue
                return await self._dead_letter(raw, exc)
            except Exception as exc:
                # A bug in the handler must not stop the router or lose the record.
                log.exception("handler crashed on %s[%d]@%d", raw.topic, raw.partition, raw.offset)
                return await self._dead_letter(raw, exc)
            return True

    async def _dead_letter(self, raw: ConsumerRecord, error: BaseException) -> bool:
        try:
            await self._letters.dead_letter(raw, error)
        except MulambdaError as exc:
            log.error(
                "could not dead-letter %s[%d]@%d (left uncommitted): %s",
                raw.topic,
                raw.partition,
                raw.offset,
                exc.reason,
            )
            return False
        if self._on_dead_letter is not None:
            self._on_dead_letter()
        return True

    async def _commit(
        self,
        consumer: AIOKafkaConsumer,
        *,
        force: bool = False,
        only: set[TopicPartition] | None = None,
    ) -> None:
        now = time.monotonic()
        if not force and now - self._last_commit < self._commit_interval_s:
            return
        self._last_commit = now
        assigned = consumer.assignment()
        offsets: dict[TopicPartition, int] = {}
        for tp, fetched in self._fetched.items():
            if tp not in assigned or (only is not None and tp not in only):
                continue
            pending = self._pending.get(tp)
            safe = min(pending) if pending else fetched
            if safe > self._committed.get(tp, -1):
                offsets[tp] = safe
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            # A rebalance took the partition; the new owner re-reads from the last commit.
            log.warning("commit failed (records will be redelivered): %s", exc)
            return
        self._committed.update(offsets)


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
        selection_timeout_s: float = 2.0,
        call_timeout_s: float = 30.0,
        top_k: int = 3,
        registry: CollectorRegistry | None = None,
        grace_s: float = 10.0,
    ) -> None:
        self._kafka = kafka
        self._catalog = catalog
        self.router_id = router_id
        self._group_id = group_id
        self._concurrency = concurrency
        self._selection_timeout_s = selection_timeout_s
        self._call_timeout_s = call_timeout_s
        self._top_k = top_k
        self._grace_s = grace_s
        self.registry = registry or CollectorRegistry()
        self.metrics = RouterMetrics(self.registry)
        self._producer = Producer(kafka)
        self._requester: Requester[SelectionRequest, SelectionReply] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._intake: _Intake | None = None

    @property
    def ready(self) -> bool:
        """Consuming and able to ask for selections."""
        return self._intake is not None and self._requester is not None

    async def start(self) -> None:
        """Connect producer, requester, HTTP pool, then start consuming."""
        if self._intake is not None:
            return
        try:
            await self._producer.start()
            self._requester = Requester(
                self._kafka,
                reply_model=SelectionReply,
                request_topic=self._catalog.name(Topic.SELECTION_REQUESTS),
                reply_topic=self._catalog.name(Topic.SELECTION_REPLIES),
                instance_id=self.router_id,
                producer=self._producer,
            )
            await self._requester.start()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._concurrency * 2, keepalive_timeout=30)
            )
            letters = DeadLetterer(
                self._producer, self._catalog.name(Topic.DEAD_LETTERS), self._group_id
            )
            intake = _Intake(
                self._kafka,
                self._catalog.name(Topic.INFERENCE_REQUESTS),
                self.handle,
                group_id=self._group_id,
                dead_letters=letters,
                on_invalid=self._answer_invalid,
                on_dead_letter=self.metrics.dead_letters.inc,
                concurrency=self._concurrency,
                grace_s=self._grace_s,
            )
            await intake.start()
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
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        await self._producer.stop()

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
        """Route one request and publish exactly one result for it."""
        request = record.value
        if not isinstance(request, InferenceRequest):
            raise DecodeError("inference request without a body")
        token = correlation_id.set(request.correlation_id)
        started = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            result = await self.route(request)
            result = result.model_copy(
                update={"latency_ms": (time.perf_counter() - started) * 1000}
            )
            await self._producer.send_and_wait(
                request.reply_topic,
                result,
                key=request.correlation_id,
                partition=request.reply_partition,
            )
            self.metrics.requests.labels(result.status.value).inc()
            self.metrics.latency.observe(time.perf_counter() - started)
        finally:
            self.metrics.in_flight.dec()
            correlation_id.reset(token)

    async def route(self, request: InferenceRequest) -> InferenceResult:
        """Select and call; never raises for request-level problems, returns an error."""
        if request.expired():
            return _error(request, "deadline passed before the request was routed")
        remaining = (request.deadline - utcnow()).total_seconds()
        size = input_size_of(request)
        try:
            reply = await self._select(request, size, min(remaining, self._selection_timeout_s))
        except MulambdaError as exc:
            # Timeout, an undecodable reply, Kafka down: the client hears why now rather
            # than waiting out its deadline.
            return _error(request, f"selection failed: {exc.reason}")
        if reply.status is SelectionStatus.NO_CANDIDATE:
            return _error(
                request,
                f"no candidate (eliminated by {reply.eliminated_by or 'unknown'}): "
                f"{reply.error or 'no executor passed the criteria'}",
            )
        if reply.status is not SelectionStatus.OK or not reply.candidates:
            return _error(request, f"selection failed: {reply.error or 'no candidates returned'}")
        last: MulambdaError | None = None
        attempts = 0
        for candidate in reply.candidates:
            remaining = (request.deadline - utcnow()).total_seconds()
            if remaining <= 0:
                break
            attempts += 1
            client = TFServingClient(candidate.endpoint, session=self._session)
            called = time.perf_counter()
            try:
                output = await client.infer(
                    request.verb,
                    candidate.model_name,
                    request.body,
                    version=candidate.model_version,
                    timeout_s=min(remaining, self._call_timeout_s),
                )
            except MulambdaError as exc:
                # ExecutorError says whether another executor may succeed; anything
                # else (a registration TF Serving cannot address) is not retriable.
                last = exc
                log.info("executor %s failed: %s", candidate.executor_id, exc.reason)
                if not exc.retriable:
                    break
                self.metrics.failovers.inc()
                continue
            elapsed_ms = (time.perf_counter() - called) * 1000
            await self._observe(request, candidate.executor_id, elapsed_ms, size)
            return InferenceResult(
                correlation_id=request.correlation_id,
                status=InferenceStatus.OK,
                executor_id=candidate.executor_id,
                model_name=candidate.model_name,
                output=output,
                attempts=attempts,
            )
        reason = last.reason if last is not None else "deadline passed during failover"
        return _error(
            request,
            f"all {attempts} candidate(s) failed; last: {reason}",
            code=last.status if isinstance(last, ExecutorError) else None,
            attempts=attempts,
        )

    async def _select(
        self, request: InferenceRequest, size: int, timeout_s: float
    ) -> SelectionReply:
        requester = self._requester
        if requester is None:
            raise MulambdaError("router is not started")
        selection = SelectionRequest(
            correlation_id=request.correlation_id,
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
        )
        return await requester.request(selection, key=request.client_id, timeout_s=timeout_s)

    async def _observe(
        self, request: InferenceRequest, executor_id: str, elapsed_ms: float, size: int
    ) -> None:
        # Fire and forget: the result matters more than the feedback, and the producer
        # retries on its own; awaiting the ack would add a round trip per request. A
        # failure here must not fail (and so re-route) a request that was answered.
        measurement = LatencyMeasurement(
            executor_id=executor_id,
            client_id=request.client_id,
            latency_ms=elapsed_ms,
            source=LatencySource.OBSERVED,
            input_size=size,
        )
        try:
            delivery = await self._producer.send(
                self._catalog.name(Topic.LATENCY_MEASUREMENTS), measurement, key=executor_id
            )
        except MulambdaError as exc:
            log.warning("observed latency of %s not published: %s", executor_id, exc.reason)
            return
        delivery.add_done_callback(_log_failed_delivery)

    async def _answer_invalid(self, raw: ConsumerRecord, exc: DecodeError) -> bool:
        """Answer an invalid request with an error result when its reply address is
        readable (the client is waiting for it); else it is dead-lettered."""
        address = peek_reply_address(raw.value)
        if address is None:
            return False
        result = InferenceResult(
            correlation_id=address.correlation_id,
            status=InferenceStatus.ERROR,
            error=exc.reason,
            attempts=0,
        )
        await self._producer.send_and_wait(
            address.topic, result, key=address.correlation_id, partition=address.partition
        )
        self.metrics.requests.labels("invalid").inc()
        return True


def _log_failed_delivery(delivery: asyncio.Future[Any]) -> None:
    # Retrieve the exception so asyncio does not report it as never retrieved.
    if not delivery.cancelled() and delivery.exception() is not None:
        log.warning("observed latency not delivered: %s", delivery.exception())


def _error(
    request: InferenceRequest, reason: str, *, code: int | None = None, attempts: int = 0
) -> InferenceResult:
    return InferenceResult(
        correlation_id=request.correlation_id,
        status=InferenceStatus.ERROR,
        error=reason,
        error_code=code,
        attempts=attempts,
    )
