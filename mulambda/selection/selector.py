"""The selector worker: materialises executor state and answers selection requests.

Two streams, two ways of consuming:

* **State** (executor registrations, client registrations, executor status, latency
  measurements): every selector instance needs all of it, so each reads every partition
  without a consumer group. Each batch is applied to the in-memory
  :class:`~mulambda.selection.view.ExecutorView` (which selections read; the store is never read per
  request) and written to the :class:`~mulambda.selection.store.ViewStore` in one pipeline, with
  the offsets reached.
* **Requests** (selection requests): shared by a consumer group, so selectors scale out
  over the request partitions (keyed by client id). Replies go to the partition the
  requester named; offsets are committed only after the replies were acknowledged.

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
dead-lettered with that reason (checked against cached cluster metadata), instead of
stalling the request loop for Kafka's metadata timeout or failing inside aiokafka.

Clock: the view runs on wall-clock seconds; a record counts as of its Kafka timestamp
(never later than now), so replayed heartbeats are as old as they really are.

Load: each selection counts as outstanding on the executor it ranked first until its
estimated latency has passed twice over (bounded by the request's deadline). Several
selectors each count their own (``source`` = selector id); the view takes
``max(in_flight from heartbeats, sum of outstanding)``.

Invalid state records are dead-lettered by every selector instance that reads them
(each reads everything); the letters are identical but for ``consumer_group``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mulambda.errors import (
    ConfigurationError,
    DecodeError,
    KafkaUnavailable,
    MulambdaError,
    SelectionError,
    StoreUnavailable,
)
from mulambda.kafka import (
    Admin,
    ConsumerLoop,
    DeadLetterer,
    KafkaConfig,
    KafkaConsumer,
    Producer,
    RawRecord,
    Record,
    TopicPartition,
    answer_invalid_requests,
    commit_unset_positions,
    fetch_retrying,
    lag_of,
    replay,
    start_consumer,
)
from mulambda.routing.requester import HEADER_CORRELATION_ID, reply_address, send_reply
from mulambda.runtime.lifecycle import Lifecycle
from mulambda.selection.policies import POLICIES, PolicyState, select
from mulambda.selection.store import (
    ClientRemoved,
    ExecutorRemoved,
    ObservedLatency,
    RegistrationAsOf,
    Snapshot,
    StoreEvent,
    ViewStore,
)
from mulambda.selection.view import ExecutorView
from mulambda.wire.catalog import Catalog, Topic
from mulambda.wire.codec import ReplyAddress, decode
from mulambda.wire.events import (
    ClientRegistration,
    ExecutorRegistration,
    ExecutorStatus,
    LatencyMeasurement,
    LatencySource,
    SelectionReply,
    SelectionRequest,
    SelectionStatus,
    WireModel,
)

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 1024
"""Selection requests are small; anything larger is refused with an error reply."""


class UndeliverableReply(SelectionError):
    """A request whose reply topic or partition does not exist; it is dead-lettered."""


class ReplyTargets:
    """Partition counts of every topic, to vet reply addresses without blocking.

    aiokafka's producer waits up to its request timeout for metadata of a topic it does
    not know, so one request naming a missing reply topic would stall the request loop
    for seconds, and it asserts on a partition out of range. ``fetch`` returns every
    topic's partition count in one metadata round trip; a miss refreshes at most every
    ``min_refresh_s`` (a flood of made-up topic names costs a few fetches a second).
    """

    def __init__(
        self, fetch: Callable[[], Awaitable[Mapping[str, int]]], *, min_refresh_s: float = 0.5
    ) -> None:
        self._fetch = fetch
        self._min_refresh_s = min_refresh_s
        self._counts: dict[str, int] = {}
        self._fetched_at = -float("inf")
        self._refreshing: asyncio.Future[None] | None = None

    async def refresh(self) -> None:
        """Fetch the partition counts now (concurrent callers share one fetch)."""
        if self._refreshing is not None:
            await asyncio.shield(self._refreshing)
            return
        self._refreshing = asyncio.get_running_loop().create_future()
        try:
            self._counts = dict(await self._fetch())
            self._fetched_at = time.monotonic()
        finally:
            self._refreshing.set_result(None)
            self._refreshing = None

    async def problem(self, address: ReplyAddress) -> str | None:
        """Why a reply cannot go to ``address``, or None when it can."""
        count = self._counts.get(address.topic)
        stale = time.monotonic() - self._fetched_at >= self._min_refresh_s
        fits = count is not None and (address.partition is None or address.partition < count)
        if not fits and stale:
            await self.refresh()
            count = self._counts.get(address.topic)
        if count is None:
            return f"reply topic {address.topic!r} does not exist"
        if address.partition is not None and address.partition >= count:
            return (
                f"reply partition {address.partition} does not exist "
                f"({address.topic} has {count} partitions)"
            )
        return None


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


class Outstanding:
    """Selections not yet expected to be done, per executor (expiry times)."""

    def __init__(self) -> None:
        self._pending: dict[str, deque[float]] = {}

    def add(self, executor_id: str, until: float) -> int:
        """Count one more until ``until``; return the executor's current count."""
        queue = self._pending.setdefault(executor_id, deque())
        queue.append(until)
        return len(queue)

    def sweep(self, now: float) -> dict[str, int]:
        """Drop expired entries; return the new count of every executor that changed."""
        changed: dict[str, int] = {}
        for executor_id, queue in list(self._pending.items()):
            before = len(queue)
            # Expiry times are appended in roughly increasing order; a rare late short
            # one only lingers until the longer ones before it expire.
            while queue and queue[0] <= now:
                queue.popleft()
            if len(queue) != before:
                changed[executor_id] = len(queue)
            if not queue:
                del self._pending[executor_id]
        return changed


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
        default_policy: str = "weighted",
        missed_heartbeats: float = 3.0,
        status_lookback_s: float = 300.0,
        registry: CollectorRegistry | None = None,
        grace_s: float = 10.0,
        state: PolicyState | None = None,
        catch_up_timeout_s: float = 60.0,
        max_pending_store_events: int = 100_000,
    ) -> None:
        """Build a selector; nothing connects before :meth:`start`.

        ``status_lookback_s``: how far back status and latency topics are read when the
        store has no offsets. ``catch_up_timeout_s``: bound on applying them up to their
        start-time ends before turning ready (then ready anyway, with a warning).
        ``max_pending_store_events``: store writes kept while the store is down; past it
        the backlog is dropped and the whole view is rewritten once the store is back.
        """
        if default_policy not in POLICIES:
            raise ConfigurationError(f"unknown default policy {default_policy!r}")
        self._kafka = kafka
        self._catalog = catalog
        self._store = store
        self.selector_id = selector_id
        self._group_id = group_id
        self.default_policy = default_policy
        self._missed = missed_heartbeats
        self._lookback_s = status_lookback_s
        self._grace_s = grace_s
        self._catch_up_timeout_s = catch_up_timeout_s
        self._max_pending_store = max_pending_store_events
        self._store_resync = False
        self.registry = registry or CollectorRegistry()
        self.metrics = SelectorMetrics(self.registry)
        self.metrics.view_size.set_function(lambda: len(self.view))
        self.view = ExecutorView(missed_heartbeats=missed_heartbeats)
        self._state = state or PolicyState()
        self._outstanding = Outstanding()
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
        self._pending_store: list[StoreEvent] = []
        self._pending_offsets: dict[tuple[str, int], int] = {}
        self._stored_offsets: dict[tuple[str, int], int] = {}
        self._state_positions: dict[TopicPartition, int] = {}
        self._catch_up: dict[TopicPartition, int] = {}
        self._caught_up = asyncio.Event()
        self._reply_targets = ReplyTargets(self._topic_partition_counts)
        self._ready = False
        self._stopping = asyncio.Event()
        self._state_models: dict[str, type[WireModel]] = {
            catalog.name(Topic.EXECUTOR_REGISTRATIONS): ExecutorRegistration,
            catalog.name(Topic.CLIENT_REGISTRATIONS): ClientRegistration,
            catalog.name(Topic.EXECUTOR_STATUS): ExecutorStatus,
            catalog.name(Topic.LATENCY_MEASUREMENTS): LatencyMeasurement,
        }
        self._compacted = {
            catalog.name(Topic.EXECUTOR_REGISTRATIONS),
            catalog.name(Topic.CLIENT_REGISTRATIONS),
        }

    @property
    def ready(self) -> bool:
        """True once the view was rebuilt and requests are being consumed."""
        return self._ready

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
            ),
        )
        for key, reason in snapshot.invalid.items():
            log.warning("skipped invalid stored value %s: %s", key, reason)
        view = ExecutorView(missed_heartbeats=self._missed)
        for client in snapshot.clients.values():
            view.apply_client(client)
        probes: list[tuple[float, str, str, float]] = []
        for stored in snapshot.executors.values():
            seen = stored.last_seen(now)
            view.apply_registration(stored.registration, seen)
            if stored.status is not None:
                view.apply_status(stored.status, seen)
            probes.extend((ms, stored.executor_id, c, seen) for c, ms in stored.probes.items())
        # Ascending order makes every insertion into the view's sorted latency lists an
        # append; in store order they cost O(n) each, O(n^2) for a restart.
        probes.sort()
        for ms, executor_id, client_id, _ in probes:
            # Stored values were validated on load; a message per value (100k at 10k
            # executors x 10 clients) cost a quarter of a restart.
            view.restore_probe(executor_id, client_id, ms)
        for stored in snapshot.executors.values():
            if stored.observed or stored.service_ms is not None or stored.service_fit:
                try:
                    view.restore_learned(
                        stored.executor_id,
                        stored.observed,
                        stored.service_ms,
                        stored.service_samples,
                        stored.service_fit,
                    )
                except DecodeError as exc:  # a malformed fit: keep the rest
                    log.warning("stored fit of %s unusable: %s", stored.executor_id, exc.reason)
                    view.restore_learned(
                        stored.executor_id,
                        stored.observed,
                        stored.service_ms,
                        stored.service_samples,
                    )
        self.view = view
        self._stored_offsets = snapshot.offsets
        events: list[StoreEvent] = []
        for record in replayed:
            self._apply_state(record, events)
        self._pending_store.extend(self._store_changes(snapshot, events))
        await self._flush_store()
        return ends

    def _store_changes(self, snapshot: Snapshot, replayed: list[StoreEvent]) -> list[StoreEvent]:
        """What the store must learn after a replay: the final state of every id the
        topics hold, where it differs from the store, and removal of the ids the store
        has but the topics no longer do (compacted away as tombstones while down)."""
        now = time.time()
        executors: dict[str, ExecutorRegistration | None] = {}
        clients: dict[str, ClientRegistration | None] = {}
        for event in replayed:
            if isinstance(event, ExecutorRegistration):
                executors[event.executor_id] = event
            elif isinstance(event, ExecutorRemoved):
                executors[event.executor_id] = None
            elif isinstance(event, ClientRegistration):
                clients[event.client_id] = event
            elif isinstance(event, ClientRemoved):
                clients[event.client_id] = None
        changes: list[StoreEvent] = []
        for executor_id, registration in executors.items():
            stored = snapshot.executors.get(executor_id)
            if registration is not None and (stored is None or stored.registration != registration):
                # As of the view's last heartbeat: a replayed registration is old news.
                entry = self.view.get(executor_id)
                age = now - entry.last_seen if entry is not None else float("inf")
                changes.append(RegistrationAsOf(registration, age))
        for executor_id in snapshot.executors:
            if executors.get(executor_id) is None:
                self.view.remove_executor(executor_id)
                changes.append(ExecutorRemoved(executor_id))
        for client_id, client in clients.items():
            if client is not None and snapshot.clients.get(client_id) != client:
                changes.append(client)
        for client_id in snapshot.clients:
            if clients.get(client_id) is None:
                self.view.remove_client(client_id)
                changes.append(ClientRemoved(client_id))
        return changes

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
            for tp, records in batches.items():
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
        model = self._state_models[raw.topic]
        try:
            # A null value is a tombstone only on the compacted topics; elsewhere it is junk.
            tombstone = raw.value is None and raw.topic in self._compacted
            value = None if tombstone else decode(model, raw.value)
        except DecodeError as exc:
            await self._letters.dead_letter(raw, exc)
            return
        record: Record[Any] = Record(
            raw.topic, raw.partition, raw.offset, raw.key, value, {}, raw.timestamp, raw.value
        )
        self._apply_state(record, self._pending_store)

    def _apply_state(self, record: Record[Any], out: list[StoreEvent]) -> None:
        """Apply one decoded state record to the view; queue what the store must learn."""
        at = min(time.time(), record.timestamp_ms / 1000) if record.timestamp_ms else time.time()
        value = record.value
        view = self.view
        if value is None:  # tombstone on a compacted topic
            key = record.key_str
            if key is None:
                return
            if record.topic == self._catalog.name(Topic.EXECUTOR_REGISTRATIONS):
                view.remove_executor(key)
                out.append(ExecutorRemoved(key))
            elif record.topic == self._catalog.name(Topic.CLIENT_REGISTRATIONS):
                view.remove_client(key)
                out.append(ClientRemoved(key))
        elif isinstance(value, ExecutorRegistration):
            view.apply_registration(value, at)
            out.append(value)
        elif isinstance(value, ClientRegistration):
            view.apply_client(value)
            out.append(value)
        elif isinstance(value, ExecutorStatus):
            if view.apply_status(value, at):
                out.append(value)
        elif isinstance(value, LatencyMeasurement) and view.apply_latency(value, at):
            if value.source is LatencySource.PROBE:
                out.append(value)
            else:
                entry = view.get(value.executor_id)
                if entry is not None and entry.observed_ms:
                    out.append(
                        ObservedLatency(
                            value.executor_id,
                            value.client_id,
                            entry.observed_ms[value.client_id],
                            entry.service_ms,
                            entry.service_samples,
                            _fit(entry.service_fit),
                        )
                    )
        self.metrics.state_events.labels(record.topic).inc()

    async def _flush_store(self) -> None:
        if not (self._pending_store or self._pending_offsets or self._store_resync):
            return
        events, offsets = self._pending_store, self._pending_offsets
        try:
            if self._store_resync:
                # The backlog was dropped while the store was down: rewrite everything.
                await self._store.clear()
                events = self._view_as_events()
                offsets = {(tp.topic, tp.partition): o for tp, o in self._state_positions.items()}
            await self._store.apply_batch(events, offsets=offsets)
        except StoreUnavailable as exc:
            # The in-memory view stays authoritative; keep the batch for the next flush,
            # within a bound: past it, memory matters more than an incremental write.
            self.metrics.store_failures.inc()
            log.warning("store write failed, will retry: %s", exc.reason)
            if len(self._pending_store) > self._max_pending_store:
                self._pending_store, self._pending_offsets = [], {}
                self._store_resync = True
            return
        self._pending_store, self._pending_offsets = [], {}
        if self._store_resync:
            log.info("store rewritten from the view", extra={"events": len(events)})
            self._store_resync = False

    @property
    def store_resync_pending(self) -> bool:
        """Whether the store lost writes and awaits a full rewrite from the view."""
        return self._store_resync

    def _view_as_events(self) -> list[StoreEvent]:
        """The whole view as store events (a full rewrite after the store lost writes).

        Executors the view holds as stale get no alive key (RegistrationAsOf, no status).
        """
        now = time.time()
        events: list[StoreEvent] = list(self.view.clients())
        for entry in self.view.entries():
            events.append(RegistrationAsOf(entry.registration, now - entry.last_seen))
            if entry.model_state is not None and entry.live(now):
                events.append(
                    ExecutorStatus(
                        executor_id=entry.executor_id,
                        model_state=entry.model_state,
                        in_flight=entry.in_flight,
                        errors=entry.errors,
                        heartbeat_interval_s=entry.heartbeat_interval_s,
                    )
                )
            events.extend(
                LatencyMeasurement(executor_id=entry.executor_id, client_id=c, latency_ms=ms)
                for c, ms in entry.probes.items()
            )
            events.extend(
                ObservedLatency(
                    entry.executor_id,
                    c,
                    ms,
                    entry.service_ms,
                    entry.service_samples,
                    _fit(entry.service_fit),
                )
                for c, ms in (entry.observed_ms or {}).items()
            )
        return events

    # --- requests -------------------------------------------------------------------

    async def _answer(self, record: Record[Any]) -> asyncio.Future[Any] | None:
        request = record.value
        if not isinstance(request, SelectionRequest):
            raise DecodeError("selection request without a body")
        address = reply_address(request)
        problem = await self._reply_targets.problem(address)
        if problem is not None:
            raise UndeliverableReply(problem)  # dead-lettered with the reason
        now = time.time()
        if request.expired():
            reply = SelectionReply(
                correlation_id=request.correlation_id,
                status=SelectionStatus.ERROR,
                error="deadline passed before the selector read the request",
                selector_id=self.selector_id,
            )
        else:
            started = time.perf_counter()
            reply = select(
                self.view,
                request,
                now,
                self.default_policy,
                state=self._state,
                selector_id=self.selector_id,
            )
            self.metrics.compute.observe(time.perf_counter() - started)
            self._count_outstanding(request, reply, now)
        self.metrics.selections.labels(reply.policy or "-", reply.status.value).inc()
        if reply.status is SelectionStatus.NO_CANDIDATE:
            self.metrics.no_candidate.inc()
        elif reply.status is SelectionStatus.OK:
            self.metrics.candidates.observe(len(self.view.candidates(request.traits, now)))
        return await send_reply(self._producer, address, reply)

    def _count_outstanding(
        self, request: SelectionRequest, reply: SelectionReply, now: float
    ) -> None:
        if not reply.candidates:
            return
        top = reply.candidates[0]
        expected_s = 2 * (top.estimated_latency_ms or 1000.0) / 1000
        until = min(now + expected_s, request.deadline.timestamp())
        count = self._outstanding.add(top.executor_id, until)
        self.view.set_outstanding(top.executor_id, count, source=self.selector_id)

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
            for executor_id, count in self._outstanding.sweep(time.time()).items():
                self.view.set_outstanding(executor_id, count, source=self.selector_id)
            self._update_lag()

    def _update_lag(self) -> None:
        consumer = self._state_consumer
        if consumer is not None:
            self.metrics.lag.labels("state").set(lag_of(consumer, self._state_positions))
        if self._requests is not None:
            self.metrics.lag.labels("requests").set(self._requests.lag())


def _fit(fit: Any) -> tuple[float, ...] | None:
    """The view's ServiceFit as plain numbers for the store (None before any sample)."""
    return None if fit is None else tuple(float(v) for v in fit)
