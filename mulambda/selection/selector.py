"""The selector worker: materialises executor state and answers selection requests.

The worker moves bytes between Kafka, the pure cores and Redis; the decisions are the
cores': :mod:`~mulambda.selection.state` (what a state record does to the view and the
store), :mod:`~mulambda.selection.answers` (the reply to a request, its address, the
load it adds) and :mod:`~mulambda.selection.store_sync` (what to write to the store and
when to rewrite it, the view from the store after a restart).

Two streams, two ways of consuming:

* **State** (executor registrations, client registrations, executor status, latency
  measurements): every selector instance needs all of it, so each reads every partition
  without a consumer group. Each batch is applied to the in-memory
  :class:`~mulambda.selection.view.ExecutorView` (which selections read; the store is
  never read per request) and written to the :class:`~mulambda.selection.store.ViewStore`
  in one pipeline, with the offsets reached.
* **Requests** (selection requests): shared by a consumer group, so selectors scale out
  over the request partitions (keyed by client id). Replies go to the partition the
  requester named; offsets are committed only after the replies were acknowledged, at
  most every :data:`REQUEST_COMMIT_INTERVAL_S`.

Start-up, before ``/readyz`` turns ready: load the store, replay the compacted
registration topics from the beginning (tombstones the store missed are applied),
position the status and latency topics at the store's offsets (or, on an empty store,
``status_lookback_s`` back in time, enough for any heartbeat still in force) and apply
them up to the ends they had at start; then join the request group and wait for its
partitions, committing the start position of any partition the group never committed.
Without that commit a new group's ``latest`` reset would skip requests sent between
"ready" and the first fetch, and a partition moving to another instance in a rebalance
would skip the requests its old owner had not yet read.

Reply addresses: a request whose reply topic or partition does not exist is
dead-lettered with that reason (checked against cached cluster metadata).

Clock: the view runs on wall-clock seconds; a record counts as of its Kafka timestamp
(never later than now), so replayed heartbeats are as old as they really are.

Invalid state records are dead-lettered by every selector instance that reads them
(each reads everything); the letters are identical but for ``consumer_group``. So are
executor registrations and tombstones the
:class:`~mulambda.selection.admission.RegistrationGate` refuses (key and id differ, a
signature missing, wrong or replayed while a registration secret is configured, an
endpoint outside the allow-list): they are never applied. Replayed at start-up, such
records are skipped with a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mulambda.errors import (
    DecodeError,
    KafkaUnavailable,
    MulambdaError,
    StoreUnavailable,
    UntrustedRecord,
)
from mulambda.kafka import (
    Admin,
    ConsumerLoop,
    DeadLetterer,
    KafkaConfig,
    KafkaConsumer,
    Membership,
    Producer,
    RawRecord,
    Record,
    TopicPartition,
    answer_invalid_requests,
    commit_unset_positions,
    consumer_problem,
    fetch_retrying,
    lag_of,
    producer_problem,
    replay,
    start_consumer,
)
from mulambda.kafka.reply import HEADER_CORRELATION_ID, reply_address, send_reply
from mulambda.runtime.lifecycle import Lifecycle
from mulambda.selection.admission import RegistrationGate
from mulambda.selection.answers import Answerer, ReplyTargets, UndeliverableReply
from mulambda.selection.policies import DEFAULT_POLICY, PolicyState
from mulambda.selection.state import StateApplier, record_time
from mulambda.selection.store import Snapshot, StoreEvent, ViewStore
from mulambda.selection.store_sync import (
    StoreSync,
    changes_after_replay,
    restore_view,
)
from mulambda.selection.view import ExecutorView
from mulambda.wire.catalog import Catalog, Topic
from mulambda.wire.codec import MAX_STATE_RECORD_BYTES, ReplyAddress
from mulambda.wire.events import (
    ClientRegistration,
    ExecutorRegistration,
    ObservedLatencies,
    SelectionReply,
    SelectionRequest,
    SelectionStatus,
    WireModel,
)

log = logging.getLogger(__name__)

REQUEST_COMMIT_INTERVAL_S = 0.2
"""Least time between two commits of the selection request offsets."""

MAX_REQUEST_BYTES = 64 * 1024
"""Selection requests are small; anything larger is refused with an error reply."""


class SelectorMetrics:
    """The selector's Prometheus metrics, in the worker's own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.selections = Counter(
            "mulambda_selector_selections",
            "Selections answered, by policy and status",
            ["policy", "status"],
            registry=registry,
        )
        self.compute = Histogram(
            "mulambda_selector_compute_seconds",
            "Policy compute time per selection",
            buckets=(1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 5e-3, 0.02),
            registry=registry,
        )
        self.candidates = Histogram(
            "mulambda_selector_candidates",
            "Executors passing the hard criteria per selection",
            buckets=(0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000),
            registry=registry,
        )
        self.no_candidate = Counter(
            "mulambda_selector_no_candidate", "Selections with no candidate", registry=registry
        )
        self.view_size = Gauge(
            "mulambda_selector_view_executors", "Executors in the view", registry=registry
        )
        self.state_events = Counter(
            "mulambda_selector_state_events",
            "State records applied",
            ["topic"],
            registry=registry,
        )
        self.lag = Gauge(
            "mulambda_selector_consumer_lag",
            "Records behind the end, per stream",
            ["stream"],
            registry=registry,
        )
        self.store_failures = Counter(
            "mulambda_selector_store_failures", "Failed store writes (retried)", registry=registry
        )


class Selector(Lifecycle):
    """The selector worker; a runner Service (start/stop/wait, ``async with``)."""

    def __init__(
        self,
        kafka: KafkaConfig,
        catalog: Catalog,
        store: ViewStore,
        *,
        selector_id: str,
        group_id: str = "mulambda-selector",
        default_policy: str = DEFAULT_POLICY,
        missed_heartbeats: float = 3.0,
        status_lookback_s: float = 300.0,
        registry: CollectorRegistry | None = None,
        grace_s: float = 10.0,
        state: PolicyState | None = None,
        catch_up_timeout_s: float = 60.0,
        max_pending_store_events: int = 100_000,
        membership: Membership | None = None,
        registrations: RegistrationGate | None = None,
    ) -> None:
        """Build a selector; nothing connects before :meth:`start`.

        ``registrations``: what executor-registration records must prove (signatures,
        endpoint allow-list); None checks only that key and executor id agree.

        ``status_lookback_s``: how far back status and latency topics are read when the
        store has no offsets. ``catch_up_timeout_s``: bound on applying them up to their
        start-time ends before turning ready (then ready anyway, with a warning).
        ``max_pending_store_events``: store writes kept while the store is down; past it
        the backlog is dropped and the whole view is rewritten once the store is back.
        """
        self._answers = Answerer(
            selector_id=selector_id, default_policy=default_policy, state=state
        )
        self._kafka = kafka
        self._catalog = catalog
        self._store = store
        self.selector_id = selector_id
        self._group_id = group_id
        self._membership = membership
        self._missed = missed_heartbeats
        self._lookback_s = status_lookback_s
        self._grace_s = grace_s
        self._catch_up_timeout_s = catch_up_timeout_s
        self._store_sync = StoreSync(max_pending_store_events)
        self.registry = registry or CollectorRegistry()
        self.metrics = SelectorMetrics(self.registry)
        self.metrics.view_size.set_function(lambda: len(self.view))
        self.view = ExecutorView(missed_heartbeats=missed_heartbeats)
        # No linger: the request loop awaits its replies' acks before it commits and
        # fetches again, so a 2 ms linger added to every request's latency (p50 3.7 vs
        # 5.5 ms at 500/s) and halved closed-loop throughput. Under load, replies still
        # batch up while the previous produce request is in flight.
        self._producer = Producer(kafka, linger_ms=0)
        self._letters = DeadLetterer(
            self._producer, catalog.name(Topic.DEAD_LETTERS), f"{group_id}/{selector_id}"
        )
        # Cluster metadata: the partitions to follow, and reply addresses to vet.
        self._admin = Admin(kafka)
        self._requests: ConsumerLoop | None = None
        self._state_consumer: KafkaConsumer | None = None
        self._follower: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stored_offsets: dict[tuple[str, int], int] = {}
        self._state_positions: dict[TopicPartition, int] = {}
        self._catch_up: dict[TopicPartition, int] = {}
        self._caught_up = asyncio.Event()
        self._reply_targets = ReplyTargets(self._topic_partition_counts)
        self._ready = False
        self._stopping = asyncio.Event()
        self._applier = StateApplier(catalog)
        self._state_models = self._applier.models
        self._gate = registrations or RegistrationGate()

    # The state loop (_follow_state) queues and records offsets through these two.

    @property
    def _pending_store(self) -> list[StoreEvent]:
        """Store events the state loop applied but has not written yet."""
        return self._store_sync.pending

    @property
    def _pending_offsets(self) -> dict[tuple[str, int], int]:
        """Where the state loop records the offsets its pending events reached."""
        return self._store_sync.offsets

    @property
    def ready(self) -> bool:
        """True once the view was rebuilt and while requests can be consumed and answered."""
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        """Why the selector cannot answer now (``/readyz`` says it), or None when it can."""
        if not self._ready or self._requests is None:
            return "starting"
        return (
            producer_problem(self._producer.health)
            or consumer_problem(self._requests.consumer, "request consumer", needs_assignment=True)
            or consumer_problem(self._state_consumer, "state consumer")
        )

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Rebuild the view and catch up, join the request group, then serve.

        Returns once ready (see the module docstring); on failure everything started so
        far is stopped again and the error raised.
        """
        if self._requests is not None:
            return
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        self._stopping.clear()
        began = time.perf_counter()
        # All run to the end even if one fails, so stop() finds and closes the others.
        for outcome in await asyncio.gather(
            self._producer.start(), self._admin.start(), self._store.start(), return_exceptions=True
        ):
            if isinstance(outcome, BaseException):
                raise outcome
        phases = {"connect_s": time.perf_counter() - began}

        def phase(name: str, since: float) -> float:
            now = time.perf_counter()
            phases[name] = now - since
            return now

        mark = time.perf_counter()
        offsets = await self._rebuild()
        mark = phase("rebuild_s", mark)
        await self._follow_state_from(offsets)
        await self._await_catch_up()
        await self._reply_targets.refresh()
        mark = phase("catch_up_s", mark)
        self._requests = ConsumerLoop(
            self._kafka,
            {self._catalog.name(Topic.SELECTION_REQUESTS): SelectionRequest},
            self._answer,
            group_id=self._group_id,
            membership=self._membership,
            dead_letters=self._letters,
            on_invalid=answer_invalid_requests(
                self._producer,
                self._invalid_reply,
                correlation_header=HEADER_CORRELATION_ID,
                vet_address=self._reply_targets.problem,
                on_answered=self.metrics.selections.labels("-", SelectionStatus.ERROR.value).inc,
            ),
            max_record_bytes=MAX_REQUEST_BYTES,
            auto_offset_reset="latest",
            max_batch=2000,
            # One commit per batch was one OffsetCommit per selection at low rates (85/s
            # at 100 requests/s); a redelivered selection request is answered twice at
            # worst, and its requester reads the first answer only.
            commit_interval_s=REQUEST_COMMIT_INTERVAL_S,
        )
        await self._requests.start()
        await self._settle_request_offsets(self._requests)
        phase("join_s", mark)
        self._tasks.append(asyncio.create_task(self._sweep_outstanding(), name="outstanding"))
        self._ready = True
        log.info(
            "selector ready",
            extra={
                "executors": len(self.view),
                "start_s": round(time.perf_counter() - began, 3),
                **{name: round(seconds, 3) for name, seconds in phases.items()},
            },
        )

    async def stop(self) -> None:
        """Stop serving, flush replies and the store, close; idempotent."""
        self._ready = False
        self._stopping.set()
        requests, self._requests = self._requests, None
        if requests is not None:
            await requests.stop(grace_s=self._grace_s)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._follower = None
        consumer, self._state_consumer = self._state_consumer, None
        if consumer is not None:
            await self._flush_store()
            await consumer.stop()
        await self._admin.stop()
        await self._producer.stop()
        await self._store.stop()

    async def wait(self) -> None:
        """Return when a background task ends (only on failure)."""
        waiters = list(self._tasks)
        if self._requests is not None and self._requests.done is not None:
            waiters.append(self._requests.done)
        if waiters:
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()

    # --- rebuild --------------------------------------------------------------------

    async def _rebuild(self) -> dict[TopicPartition, int]:
        """Store snapshot, then the compacted topics replayed; returns their end offsets.

        Only what the replay changed is written back to the store: rewriting every
        registration cost most of a restart, and would refresh the liveness TTL of
        executors that died long ago (a registration write counts as a heartbeat).
        """
        now = time.time()
        compacted = {
            name: model
            for name, model in self._state_models.items()
            if model in (ExecutorRegistration, ClientRegistration)
        }
        # Reading the store and the topics overlap (Redis and Kafka work meanwhile); the
        # records are applied after the snapshot, so they win where they are newer.
        replayed: list[Record[Any]] = []
        snapshot: Snapshot
        ends: dict[TopicPartition, int]
        snapshot, ends = await asyncio.gather(
            self._store.load(),
            replay(
                self._kafka,
                compacted,
                replayed.append,
                on_invalid=lambda raw, exc: log.warning(
                    "invalid record %s[%d]@%d: %s",
                    raw.topic,
                    raw.partition,
                    raw.offset,
                    exc.reason,
                ),
                max_record_bytes=MAX_STATE_RECORD_BYTES,
            ),
        )
        for key, reason in snapshot.invalid.items():
            log.warning("skipped invalid stored value %s: %s", key, reason)
        view = ExecutorView(missed_heartbeats=self._missed)
        unusable = restore_view(view, snapshot, now)
        for executor_id, reason in unusable.items():
            log.warning("stored fit of %s unusable: %s", executor_id, reason)
        self.view = view
        self._stored_offsets = snapshot.offsets
        events: list[StoreEvent] = []
        for record in replayed:
            if record.topic == self._applier.executor_registrations:
                try:
                    self._gate.admit(record.key, record.raw, record.headers.items(), record.value)
                except UntrustedRecord as exc:
                    log.warning("skipped %s@%d: %s", record.topic, record.offset, exc.reason)
                    continue
            changes = self._apply_state(record.topic, record.key, record.value, record.timestamp_ms)
            if changes:
                events.extend(changes)
        self._store_sync.queue(changes_after_replay(view, snapshot, events, time.time()))
        await self._flush_store()
        return ends

    async def _follow_state_from(self, compacted_ends: dict[TopicPartition, int]) -> None:
        consumer = await start_consumer(self._kafka, "state consumer", fetch_max_wait_ms=50)
        partitions = await self._admin.partitions(*self._state_models)
        consumer.assign(partitions)
        lookback_ms = int((time.time() - self._lookback_s) * 1000)
        stream = [tp for tp in partitions if tp not in compacted_ends]
        by_time = await consumer.offsets_for_times(dict.fromkeys(stream, lookback_ms))
        ends = await consumer.end_offsets(stream)
        self._catch_up = {}
        for tp in partitions:
            if tp in compacted_ends:
                start = compacted_ends[tp]
            elif (tp.topic, tp.partition) in self._stored_offsets:
                start = self._stored_offsets[(tp.topic, tp.partition)]
            elif by_time.get(tp) is not None:
                start = by_time[tp].offset
            else:
                start = ends[tp]
            consumer.seek(tp, start)
            if tp in ends and start < ends[tp]:
                self._catch_up[tp] = ends[tp]
        self._caught_up.clear()
        if not self._catch_up:
            self._caught_up.set()
        self._state_consumer = consumer
        self._follower = asyncio.create_task(self._follow_state(consumer), name="state")
        self._tasks.append(self._follower)

    async def _await_catch_up(self) -> None:
        """Wait until the follower applied status/latency up to their start-time ends."""
        follower = self._follower
        if follower is None:
            raise MulambdaError("state follower not started")
        waiter = asyncio.create_task(self._caught_up.wait())
        try:
            done, _ = await asyncio.wait(
                [waiter, follower],
                timeout=self._catch_up_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            waiter.cancel()
        if follower in done:
            follower.result()  # raises what stopped it
            raise MulambdaError("state follower ended during start-up")
        if not done:
            log.warning(
                "state not caught up within %.0fs; serving anyway (%d partitions behind)",
                self._catch_up_timeout_s,
                len(self._catch_up),
            )

    async def _settle_request_offsets(self, requests: ConsumerLoop) -> None:
        """Wait for request partitions; commit start positions the group never committed."""
        try:
            await requests.wait_assigned(self._kafka.request_timeout_s)
        except TimeoutError:
            # More selectors than request partitions leaves some with none: they idle.
            log.warning(
                "no request partitions assigned within %.0fs (more selectors than partitions?)",
                self._kafka.request_timeout_s,
            )
            return
        consumer = requests.consumer
        if consumer is None:
            return
        try:
            await commit_unset_positions(consumer)
        except KafkaUnavailable as exc:
            # A rebalance meanwhile; the new owner settles what it receives.
            log.warning("request partitions: %s", exc.reason)

    async def _topic_partition_counts(self) -> dict[str, int]:
        return await self._admin.partition_counts()

    # --- state ----------------------------------------------------------------------

    async def _follow_state(self, consumer: KafkaConsumer) -> None:
        while not self._stopping.is_set():
            batches = await fetch_retrying(
                consumer,
                timeout_ms=100,
                max_records=5000,
                retry_backoff_s=0.5,
                what="state fetch",
                stopping=self._stopping,
            )
            for tp in self._applier.in_apply_order(batches):
                records = batches[tp]
                for raw in records:
                    await self._apply_raw(raw)
                if records:
                    self._pending_offsets[(tp.topic, tp.partition)] = records[-1].offset + 1
                    self._state_positions[tp] = records[-1].offset + 1
            if batches or self._pending_store:
                await self._flush_store()
            if self._catch_up:
                await self._check_caught_up(consumer)

    async def _check_caught_up(self, consumer: KafkaConsumer) -> None:
        for tp, end in list(self._catch_up.items()):
            # position(), not the last offset seen: retention may have removed the tail.
            if await consumer.position(tp) >= end:
                del self._catch_up[tp]
        if not self._catch_up:
            self._caught_up.set()

    async def _apply_raw(self, raw: RawRecord) -> None:
        try:
            value = self._applier.decode(raw.topic, raw.value)
            if raw.topic == self._applier.executor_registrations:
                registration = value if isinstance(value, ExecutorRegistration) else None
                self._gate.admit(raw.key, raw.value, raw.headers, registration)
        except (DecodeError, UntrustedRecord) as exc:
            await self._letters.dead_letter(raw, exc)
            return
        changes = self._apply_state(raw.topic, raw.key, value, raw.timestamp)
        if changes:
            self._store_sync.queue(changes)

    def _apply_state(
        self, topic: str, key: bytes | None, value: WireModel | None, timestamp_ms: int | None
    ) -> list[StoreEvent] | None:
        """Apply one decoded state record to the view; return what the store must learn."""
        at = record_time(timestamp_ms, time.time())
        changes = self._applier.apply(self.view, topic, key, value, at)
        if isinstance(value, ObservedLatencies) and value.released:
            self._answers.release(self.view, value.executor_id, value.released)
        if changes is not None:
            self.metrics.state_events.labels(topic).inc()
        return changes

    async def _flush_store(self) -> None:
        write = self._store_sync.next_write(self.view, self._state_positions, time.time())
        if write is None:
            return
        try:
            if write.rewrite:
                # The backlog was dropped while the store was down: rewrite everything.
                await self._store.clear()
            await self._store.apply_batch(write.events, offsets=write.offsets)
        except StoreUnavailable as exc:
            # The in-memory view stays authoritative; the batch waits for the next flush.
            self.metrics.store_failures.inc()
            log.warning("store write failed, will retry: %s", exc.reason)
            self._store_sync.failed()
            return
        self._store_sync.written()
        if write.rewrite:
            log.info("store rewritten from the view", extra={"events": len(write.events)})

    @property
    def store_resync_pending(self) -> bool:
        """Whether the store lost writes and awaits a full rewrite from the view."""
        return self._store_sync.resync_pending

    # --- requests -------------------------------------------------------------------

    async def _answer(self, record: Record[Any]) -> asyncio.Future[Any] | None:
        request = record.value
        if not isinstance(request, SelectionRequest):
            raise DecodeError("selection request without a body")
        address = reply_address(request)
        problem = await self._reply_targets.problem(address)
        if problem is not None:
            raise UndeliverableReply(problem)  # dead-lettered with the reason
        answer = self._answers.answer(self.view, request, time.time())
        reply = answer.reply
        if answer.compute_s is not None:
            self.metrics.compute.observe(answer.compute_s)
        self.metrics.selections.labels(reply.policy or "-", reply.status.value).inc()
        if reply.status is SelectionStatus.NO_CANDIDATE:
            self.metrics.no_candidate.inc()
        elif answer.candidates is not None:
            self.metrics.candidates.observe(answer.candidates)
        return await send_reply(self._producer, address, reply)

    def _invalid_reply(self, address: ReplyAddress, exc: DecodeError) -> SelectionReply:
        """The reason, to an invalid request whose reply address is usable (else it is
        dead-lettered)."""
        return SelectionReply(
            correlation_id=address.correlation_id,
            status=SelectionStatus.ERROR,
            error=exc.reason,
            selector_id=self.selector_id,
        )

    async def _sweep_outstanding(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            self._answers.sweep(self.view, time.time())
            self._update_lag()

    def _update_lag(self) -> None:
        consumer = self._state_consumer
        if consumer is not None:
            self.metrics.lag.labels("state").set(lag_of(consumer, self._state_positions))
        if self._requests is not None:
            self.metrics.lag.labels("requests").set(self._requests.lag())
