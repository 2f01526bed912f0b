"""The selector worker against the real Kafka and Redis: selection, liveness, restarts,
scale-out, request/reply isolation, bad inputs and metrics.

Every test uses its own traits (so executors other tests registered on the shared topics
never become candidates), its own Redis key prefix and its own consumer group.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import orjson
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from mulambda.errors import MulambdaError
from mulambda.harness.infra import free_port
from mulambda.kafka import Producer, start_bounded
from mulambda.routing.requester import Requester
from mulambda.selection.selector import Selector
from mulambda.selection.store import ViewStore
from mulambda.wire.catalog import Catalog, Topic
from mulambda.wire.codec import decode, encode
from mulambda.wire.events import (
    ClientRegistration,
    DeadLetter,
    ExecutorRegistration,
    ExecutorStatus,
    LatencyMeasurement,
    LatencySource,
    ModelState,
    SelectionReply,
    SelectionRequest,
    SelectionStatus,
    SoftWeights,
    Traits,
    utcnow,
)
from tests.conftest import Infra
from tests.factories import registration

pytestmark = pytest.mark.integration

SelectionRequester = Requester[SelectionRequest, SelectionReply]


# --- helpers ---------------------------------------------------------------------------


def _uid() -> str:
    return uuid.uuid4().hex[:8]


def _traits() -> Traits:
    return Traits(model_type=f"sel-{_uid()}", input_format="tensor-f32[13]", output_format="p3")


async def _until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest_asyncio.fixture
async def prefix(infra: Infra) -> AsyncIterator[str]:
    """A Redis key prefix of this test; every key under it is deleted afterwards."""
    key_prefix = f"test-sel-{_uid()}:"
    yield key_prefix
    async with ViewStore(infra.redis_url, key_prefix=key_prefix) as store:
        await store.clear()


@pytest_asyncio.fixture
async def producer(infra: Infra) -> AsyncIterator[Producer]:
    """A producer for state records and raw requests."""
    async with Producer(infra.kafka("test-selector-producer")) as p:
        yield p


class State:
    """Publishes registrations, statuses and latencies the way companions do."""

    def __init__(self, producer: Producer, catalog: Catalog) -> None:
        self.producer = producer
        self.catalog = catalog

    async def register(self, *registrations: ExecutorRegistration) -> None:
        topic = self.catalog.name(Topic.EXECUTOR_REGISTRATIONS)
        for r in registrations:
            await self.producer.send_and_wait(topic, r, key=r.executor_id)

    async def deregister(self, *executor_ids: str) -> None:
        topic = self.catalog.name(Topic.EXECUTOR_REGISTRATIONS)
        for executor_id in executor_ids:
            await self.producer.send_and_wait(topic, None, key=executor_id)

    async def status(
        self, executor_id: str, state: ModelState = ModelState.AVAILABLE, interval: float = 30.0
    ) -> None:
        status = ExecutorStatus(
            executor_id=executor_id, model_state=state, heartbeat_interval_s=interval
        )
        await self.producer.send_and_wait(
            self.catalog.name(Topic.EXECUTOR_STATUS), status, key=executor_id
        )

    async def latency(self, executor_id: str, client_id: str, ms: float) -> None:
        measurement = LatencyMeasurement(
            executor_id=executor_id, client_id=client_id, latency_ms=ms
        )
        await self.producer.send_and_wait(
            self.catalog.name(Topic.LATENCY_MEASUREMENTS), measurement, key=executor_id
        )

    async def client(self, client_id: str) -> None:
        client = ClientRegistration(client_id=client_id, probe_url="http://127.0.0.1:9/probe")
        await self.producer.send_and_wait(
            self.catalog.name(Topic.CLIENT_REGISTRATIONS), client, key=client_id
        )


def _selector(
    infra: Infra,
    catalog: Catalog,
    key_prefix: str,
    *,
    group: str,
    sid: str | None = None,
    **kw: Any,
) -> Selector:
    sid = sid or f"sel-{_uid()}"
    missed = kw.pop("missed_heartbeats", 3.0)
    return Selector(
        infra.kafka(sid),
        catalog,
        ViewStore(infra.redis_url, key_prefix=key_prefix, missed_heartbeats=missed),
        selector_id=sid,
        group_id=group,
        missed_heartbeats=missed,
        grace_s=2.0,
        **kw,
    )


def _requester(infra: Infra, catalog: Catalog, partition: int | None = None) -> SelectionRequester:
    return Requester(
        infra.kafka("test-selector-requester"),
        request_topic=catalog.name(Topic.SELECTION_REQUESTS),
        reply_topic=catalog.name(Topic.SELECTION_REPLIES),
        reply_model=SelectionReply,
        reply_partition=partition,
    )


def _ask(
    client_id: str,
    traits: Traits,
    *,
    latency: float = 0.5,
    accuracy: float = 0.5,
    policy: str | None = None,
) -> SelectionRequest:
    # reply_topic and deadline are placeholders: Requester.request sets them.
    return SelectionRequest(
        reply_topic="placeholder",
        deadline=utcnow(),
        client_id=client_id,
        traits=traits,
        weights=SoftWeights(latency=latency, accuracy=accuracy),
        policy=policy,
    )


def _group() -> str:
    return f"test-selector-{_uid()}"


class Collector:
    """Reads one reply partition and the dead-letter topic from their current ends.

    For requests sent as raw bytes (which a Requester cannot send): positioned before
    anything is sent, then collects records by key.
    """

    def __init__(self, infra: Infra, catalog: Catalog, reply_partition: int) -> None:
        self._config = infra.kafka("test-selector-collector")
        self._replies = TopicPartition(catalog.name(Topic.SELECTION_REPLIES), reply_partition)
        self._letters = TopicPartition(catalog.name(Topic.DEAD_LETTERS), 0)
        self._consumer: AIOKafkaConsumer | None = None
        self.replies: dict[bytes, SelectionReply] = {}
        self.letters: dict[bytes, DeadLetter] = {}

    async def __aenter__(self) -> Self:
        consumer = AIOKafkaConsumer(
            **self._config.client_kwargs(), group_id=None, enable_auto_commit=False
        )
        await start_bounded(consumer, "collector", 15)
        consumer.assign([self._replies, self._letters])
        await consumer.seek_to_end(self._replies, self._letters)
        for tp in (self._replies, self._letters):
            await consumer.position(tp)
        self._consumer = consumer
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    def _take(self, raw: ConsumerRecord) -> None:
        if raw.key is None:
            return
        if raw.topic == self._replies.topic:
            self.replies[raw.key] = decode(SelectionReply, raw.value)
        else:
            self.letters[raw.key] = decode(DeadLetter, raw.value)

    async def wait(
        self, replies: Iterable[str] = (), letters: Iterable[str] = (), timeout_s: float = 15.0
    ) -> None:
        """Read until a reply with each correlation id and a letter with each key arrived."""
        assert self._consumer is not None
        want_replies = {r.encode() for r in replies}
        want_letters = {k.encode() for k in letters}
        deadline = time.monotonic() + timeout_s
        while not (want_replies <= self.replies.keys() and want_letters <= self.letters.keys()):
            if time.monotonic() > deadline:
                missing = (want_replies - self.replies.keys()) | (
                    want_letters - self.letters.keys()
                )
                raise AssertionError(f"no reply/dead letter for {sorted(missing)}")
            batches = await self._consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for raw in records:
                    self._take(raw)


def _raw_request(
    catalog: Catalog, traits: Traits, correlation_id: str, reply_partition: int, **changes: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "reply_topic": catalog.name(Topic.SELECTION_REPLIES),
        "reply_partition": reply_partition,
        "correlation_id": correlation_id,
        "deadline": (utcnow() + timedelta(seconds=20)).isoformat(),
        "client_id": "raw-client",
        "traits": traits.model_dump(),
    }
    body.update(changes)
    return body


# --- tests -----------------------------------------------------------------------------


async def test_register_select_deregister_and_metrics(
    infra: Infra, catalog: Catalog, prefix: str, producer: Producer
) -> None:
    state = State(producer, catalog)
    traits = _traits()
    uid = _uid()
    fast, accurate, client = f"fast-{uid}", f"accurate-{uid}", f"client-{uid}"
    selector = _selector(infra, catalog, prefix, group=_group())
    async with selector, _requester(infra, catalog) as requester:
        assert selector.ready
        await state.client(client)
        await state.register(
            registration(fast, traits=traits, accuracy=0.80, model_data_delay_ms_per_element=0),
            registration(accurate, traits=traits, accuracy=0.95, model_data_delay_ms_per_element=0),
        )
        await state.status(fast)
        await state.status(accurate)
        await state.latency(fast, client, 5.0)
        await state.latency(accurate, client, 200.0)

        def learned() -> bool:
            f, a = selector.view.get(fast), selector.view.get(accurate)
            return bool(
                f and a and f.model_state and a.model_state and client in f.probes and a.probes
            )

        await _until(learned, 10, "the view to learn both executors")

        by_latency = await requester.request(_ask(client, traits, latency=1, accuracy=0))
        assert by_latency.status is SelectionStatus.OK, by_latency
        assert by_latency.selector_id == selector.selector_id
        assert by_latency.policy == "adaptive"  # the default
        assert [c.executor_id for c in by_latency.candidates] == [fast, accurate]
        # The probes plus the default service time (10 ms) while nothing is learned.
        assert by_latency.candidates[0].estimated_latency_ms == pytest.approx(15.0)
        assert by_latency.candidates[1].estimated_latency_ms == pytest.approx(210.0)

        by_accuracy = await requester.request(_ask(client, traits, latency=0, accuracy=1))
        assert by_accuracy.status is SelectionStatus.OK
        assert [c.executor_id for c in by_accuracy.candidates] == [accurate, fast]
        assert by_accuracy.candidates[0].accuracy == pytest.approx(0.95)

        # Both are persisted with their probes.
        async with ViewStore(infra.redis_url, key_prefix=prefix) as store:
            await _until_async(lambda: _has(store, {fast, accurate}), 10, "the store to fill")

            await state.deregister(fast, accurate)
            await _until(
                lambda: selector.view.get(fast) is None and selector.view.get(accurate) is None,
                10,
                "the tombstones to be applied",
            )
            gone = await requester.request(_ask(client, traits))
            assert gone.status is SelectionStatus.NO_CANDIDATE
            assert gone.eliminated_by == "traits"
            assert gone.candidates == []
            assert gone.error
            assert "traits" in gone.error
            await _until_async(
                lambda: _lacks(store, {fast, accurate}), 10, "the tombstones to reach the store"
            )

        registry = selector.registry
        ok = registry.get_sample_value(
            "mulambda_selector_selections_total", {"policy": "adaptive", "status": "ok"}
        )
        none = registry.get_sample_value(
            "mulambda_selector_selections_total", {"policy": "adaptive", "status": "no_candidate"}
        )
        assert ok == 2
        assert none == 1
        assert registry.get_sample_value("mulambda_selector_no_candidate_total") == 1
        assert registry.get_sample_value("mulambda_selector_view_executors") == len(selector.view)
        applied = registry.get_sample_value(
            "mulambda_selector_state_events_total",
            {"topic": catalog.name(Topic.EXECUTOR_REGISTRATIONS)},
        )
        assert applied is not None
        assert applied >= 4
        assert registry.get_sample_value("mulambda_selector_compute_seconds_count") == 3
    assert not selector.ready


async def _until_async(predicate: Callable[[], Any], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)


async def _has(store: ViewStore, ids: set[str]) -> bool:
    return ids <= set(await store.executor_ids())


async def _stored_service(store: ViewStore, executor_id: str, service: float | None) -> bool:
    stored = (await store.load()).executors.get(executor_id)
    return stored is not None and stored.service_ms == service


async def _lacks(store: ViewStore, ids: set[str]) -> bool:
    return not ids & set(await store.executor_ids())


INTERVAL = 0.4
TTL = 3 * INTERVAL  # missed_heartbeats x the interval


async def test_heartbeat_expiry_excludes_and_a_new_status_restores(
    infra: Infra, catalog: Catalog, prefix: str, producer: Producer
) -> None:
    state = State(producer, catalog)
    traits = _traits()
    executor = f"beat-{_uid()}"
    selector = _selector(infra, catalog, prefix, group=_group(), missed_heartbeats=3)
    async with selector, _requester(infra, catalog) as requester:
        await state.register(registration(executor, traits=traits, heartbeat_interval_s=INTERVAL))
        # Taken before sending: the status's Kafka timestamp (its "seen" time) is later.
        last_beat = time.monotonic()
        await state.status(executor, interval=INTERVAL)
        await _until(
            lambda: (e := selector.view.get(executor)) is not None and e.model_state is not None,
            10,
            "the status",
        )
        live = await requester.request(_ask("c", traits))
        assert live.status is SelectionStatus.OK
        assert live.candidates[0].executor_id == executor

        # No status for 3 intervals: excluded for liveness (asked repeatedly until then).
        while True:
            reply = await requester.request(_ask("c", traits))
            if reply.status is SelectionStatus.NO_CANDIDATE:
                break
            assert reply.status is SelectionStatus.OK
            assert time.monotonic() - last_beat < TTL + 2, "still selected long after its TTL"
            await asyncio.sleep(0.05)
        assert reply.eliminated_by == "liveness"
        assert time.monotonic() - last_beat >= TTL - 0.02  # not before its time to live ran out

        await state.status(executor, interval=INTERVAL)
        while True:
            back = await requester.request(_ask("c", traits))
            if back.status is SelectionStatus.OK:
                break
            assert time.monotonic() - last_beat < 10, "never came back after a new status"
            await asyncio.sleep(0.05)
        assert back.candidates[0].executor_id == executor


async def test_restart_recovers_from_store_and_honours_tombstones_sent_while_down(
    infra: Infra, catalog: Catalog, prefix: str, producer: Producer
) -> None:
    state = State(producer, catalog)
    traits = _traits()
    uid = _uid()
    ids = [f"rs-{uid}-{i}" for i in range(3)]
    group = _group()
    first = _selector(infra, catalog, prefix, group=group)
    async with first, ViewStore(infra.redis_url, key_prefix=prefix) as store:
        for executor_id in ids:
            await state.register(registration(executor_id, traits=traits))
            await state.status(executor_id)
        await _until(
            lambda: all(
                (e := first.view.get(i)) is not None and e.model_state is not None for i in ids
            ),
            10,
            "the first selector's view",
        )
        # What routers' observed latencies taught must survive the restart too.
        await state.producer.send_and_wait(
            catalog.name(Topic.LATENCY_MEASUREMENTS),
            LatencyMeasurement(
                executor_id=ids[0],
                client_id="c",
                latency_ms=42.0,
                source=LatencySource.OBSERVED,
                input_size=1,
            ),
            key=ids[0],
        )
        await _until(
            lambda: (e := first.view.get(ids[0])) is not None and e.service_samples == 1,
            10,
            "the observed latency",
        )
        learned = first.view.get(ids[0])
        assert learned is not None
        learned_service, learned_observed = learned.service_ms, dict(learned.observed_ms or {})
        learned_fit, learned_slope = learned.service_fit, learned.load_slope_ms
        assert learned_fit is not None
        await _until_async(lambda: _has(store, set(ids)), 10, "the store")
        await _until_async(
            lambda: _stored_service(store, ids[0], learned_service), 10, "the learned service"
        )
    assert not first.ready

    # While it is down: one executor deregisters, another reports LOADING, and the store
    # holds an executor no topic knows (as after compaction dropped its tombstone).
    await state.deregister(ids[2])
    await state.status(ids[1], ModelState.LOADING)
    ghost = registration(f"ghost-{uid}", traits=traits)
    async with ViewStore(infra.redis_url, key_prefix=prefix) as store:
        await store.apply_batch([ghost])
        assert ghost.executor_id in await store.executor_ids()

    second = _selector(infra, catalog, prefix, group=group)
    assert not second.ready
    starting = asyncio.create_task(second.start())
    try:
        await asyncio.sleep(0)
        assert not second.ready  # not before the rebuild finished
        await asyncio.wait_for(asyncio.shield(starting), 30)
        assert second.ready
        # Ready means rebuilt and caught up: nothing is awaited between here and the asserts.
        assert second.view.get(ids[0]) is not None
        assert second.view.get(ids[1]) is not None
        assert second.view.get(ids[2]) is None, "tombstone sent while down was not honoured"
        assert second.view.get(ghost.executor_id) is None, "store-only executor survived"
        loading = second.view.get(ids[1])
        assert loading is not None
        assert loading.model_state is ModelState.LOADING  # sent while down: caught up
        restored = second.view.get(ids[0])
        assert restored is not None
        assert restored.service_ms == learned_service
        assert restored.service_samples == 1
        assert restored.observed_ms == learned_observed
        assert restored.service_fit == learned_fit
        assert restored.load_slope_ms == learned_slope
        async with _requester(infra, catalog) as requester:
            reply = await requester.request(_ask("c", traits))
        assert reply.status is SelectionStatus.OK
        assert [c.executor_id for c in reply.candidates] == [ids[0]]
        async with ViewStore(infra.redis_url, key_prefix=prefix) as store:
            await _until_async(
                lambda: _lacks(store, {ids[2], ghost.executor_id}), 10, "store cleanup"
            )
    finally:
        await starting
        await second.stop()
    assert not second.ready

    # An empty store: everything comes back from the compacted topic (and recent status).
    empty_prefix = f"test-sel-{_uid()}:"
    third = _selector(infra, catalog, empty_prefix, group=_group())
    try:
        async with third:
            assert third.view.get(ids[0]) is not None
            assert third.view.get(ids[1]) is not None
            assert third.view.get(ids[2]) is None
            assert third.view.get(ghost.executor_id) is None
            entry = third.view.get(ids[1])
            assert entry is not None
            assert entry.model_state is ModelState.LOADING
            async with _requester(infra, catalog) as requester:
                reply = await requester.request(_ask("c", traits))
            assert [c.executor_id for c in reply.candidates] == [ids[0]]
    finally:
        async with ViewStore(infra.redis_url, key_prefix=empty_prefix) as store:
            await store.clear()
    await state.deregister(ids[0], ids[1])


async def test_two_selectors_in_one_group_share_requests_and_see_all_executors(
    infra: Infra, catalog: Catalog, prefix: str, producer: Producer
) -> None:
    state = State(producer, catalog)
    traits = _traits()
    uid = _uid()
    ids = [f"pair-{uid}-{i}" for i in range(4)]
    group = _group()
    a = _selector(infra, catalog, prefix, group=group, sid=f"a-{uid}")
    b = _selector(infra, catalog, prefix, group=group, sid=f"b-{uid}")
    try:
        await asyncio.gather(a.start(), b.start())
        for executor_id in ids:
            await state.register(registration(executor_id, traits=traits))
        await _until(
            lambda: all(s.view.get(i) is not None for s in (a, b) for i in ids),
            10,
            "both views to hold every executor",
        )
        async with _requester(infra, catalog) as requester:
            # Fixed client ids (the request key) spread over the six request partitions.
            replies = await asyncio.gather(
                *(requester.request(_ask(f"client-{i}", traits), timeout_s=15) for i in range(40))
            )
        assert all(r.status is SelectionStatus.OK for r in replies)
        answered_by = {r.selector_id for r in replies}
        assert answered_by == {a.selector_id, b.selector_id}
        by_client: dict[str, set[str | None]] = {}
        for i, reply in enumerate(replies):
            by_client.setdefault(f"client-{i}", set()).add(reply.selector_id)
        assert all(len(s) == 1 for s in by_client.values())
    finally:
        await asyncio.gather(a.stop(), b.stop())
    await state.deregister(*ids)


async def test_two_requesters_get_only_their_own_answers(
    infra: Infra, catalog: Catalog, prefix: str, producer: Producer
) -> None:
    state = State(producer, catalog)
    traits = _traits()
    uid = _uid()
    fast, accurate = f"xf-{uid}", f"xa-{uid}"
    async with _selector(infra, catalog, prefix, group=_group()) as selector:
        await state.register(
            registration(fast, traits=traits, accuracy=0.5, model_data_delay_ms_per_element=0),
            registration(accurate, traits=traits, accuracy=0.99, model_data_delay_ms_per_element=0),
        )
        await state.latency(fast, "speedy", 2.0)
        await state.latency(accurate, "speedy", 500.0)
        await _until(
            lambda: (e := selector.view.get(accurate)) is not None and "speedy" in e.probes,
            10,
            "the latencies",
        )
        n = 150
        async with _requester(infra, catalog, 5) as one, _requester(infra, catalog, 6) as two:
            # One requester cares only for latency, the other only for accuracy.
            first, second = await asyncio.gather(
                asyncio.gather(
                    *(one.request(_ask("speedy", traits, latency=1, accuracy=0)) for _ in range(n))
                ),
                asyncio.gather(
                    *(two.request(_ask("speedy", traits, latency=0, accuracy=1)) for _ in range(n))
                ),
            )
            assert {r.candidates[0].executor_id for r in first} == {fast}
            assert {r.candidates[0].executor_id for r in second} == {accurate}
            for requester in (one, two):
                assert requester.stats.replied == n
                assert requester.stats.foreign == 0
                assert requester.stats.late == 0
    await state.deregister(fast, accurate)


async def test_requests_sent_right_after_start_are_all_answered(
    infra: Infra, catalog: Catalog, prefix: str, producer: Producer
) -> None:
    state = State(producer, catalog)
    traits = _traits()
    executor = f"race-{_uid()}"
    await state.register(registration(executor, traits=traits))
    # A brand-new group: nothing committed, so only the selector's own start-up can make
    # sure requests sent the moment it is ready are not skipped.
    selector = _selector(infra, catalog, prefix, group=_group())
    requester = _requester(infra, catalog)
    try:
        await asyncio.gather(selector.start(), requester.start())
        replies = await asyncio.gather(
            *(requester.request(_ask(f"racer-{i}", traits), timeout_s=15) for i in range(60))
        )
        assert [r.status for r in replies] == [SelectionStatus.OK] * 60
        assert {r.candidates[0].executor_id for r in replies} == {executor}
    finally:
        await requester.stop()
        await selector.stop()
    await state.deregister(executor)


async def test_bad_requests_get_error_replies_or_dead_letters_and_serving_goes_on(
    infra: Infra, catalog: Catalog, prefix: str, producer: Producer
) -> None:
    state = State(producer, catalog)
    traits = _traits()
    executor = f"bad-{_uid()}"
    partition = 7
    requests = catalog.name(Topic.SELECTION_REQUESTS)
    replies_topic = catalog.name(Topic.SELECTION_REPLIES)
    await state.register(registration(executor, traits=traits))
    selector = _selector(infra, catalog, prefix, group=_group())
    async with selector, Collector(infra, catalog, partition) as collector:
        uid = _uid()
        traits_json = traits.model_dump()

        def body(name: str, *, drop: str | None = None, **changes: Any) -> tuple[str, bytes]:
            cid = f"{name}-{uid}"
            fields = _raw_request(catalog, traits, cid, partition, **changes)
            fields.pop(drop or "", None)
            return cid, orjson.dumps(fields)

        bad_policy = body("policy", policy="nope")
        weight_high = body("weight", weights={"latency": 1.5, "accuracy": 0.5})
        cid_nan, raw_nan = body("nan", weights={"latency": 0.123456789, "accuracy": 0.5})
        # orjson cannot write NaN; JSON parsers that accept the token (pydantic's does) can.
        weight_nan = (cid_nan, raw_nan.replace(b"0.123456789", b"NaN"))
        negative = body("size", input_size=-1)
        no_traits = body("traits", drop="traits")
        oversize = body("big", padding="x" * (70 * 1024))
        expired = body("late", deadline=(utcnow() - timedelta(seconds=1)).isoformat())
        answered = [bad_policy, weight_high, weight_nan, negative, no_traits, oversize, expired]
        # No readable address, a reply topic that does not exist, a partition out of range.
        letters = {
            f"garbage-{uid}": b"\x00 not json {",
            f"anon-{uid}": orjson.dumps({"client_id": "x", "traits": traits_json}),
            f"nowhere-{uid}": orjson.dumps(
                _raw_request(
                    catalog, traits, f"nowhere-{uid}", 0, reply_topic=f"no-such-topic-{uid}"
                )
            ),
            f"farpart-{uid}": orjson.dumps(_raw_request(catalog, traits, f"farpart-{uid}", 999)),
        }
        started = time.monotonic()
        for cid, raw in answered:
            await producer.send_raw(requests, raw, key=cid)
        for key, raw in letters.items():
            await producer.send_raw(requests, raw, key=key)
        # Still serving afterwards, on the same request partitions as the bad ones.
        good_cid = f"good-{uid}"
        good = SelectionRequest(
            reply_topic=replies_topic,
            reply_partition=partition,
            correlation_id=good_cid,
            deadline=utcnow() + timedelta(seconds=20),
            client_id="raw-client",
            traits=traits,
        )
        await producer.send_raw(requests, encode(good), key=good_cid)
        await producer.flush()
        await collector.wait(
            replies=[c for c, _ in answered] + [good_cid], letters=list(letters), timeout_s=20
        )
        took = time.monotonic() - started
        got = {k.decode(): v for k, v in collector.replies.items()}
        for cid, _ in answered:
            assert got[cid].status is SelectionStatus.ERROR, (cid, got[cid])
            assert got[cid].selector_id == selector.selector_id
            assert got[cid].correlation_id == cid
        assert "unknown policy 'nope'" in (got[bad_policy[0]].error or "")
        assert "weights.latency" in (got[weight_high[0]].error or "")
        assert "weights.latency" in (got[cid_nan].error or "")
        assert "finite" in (got[cid_nan].error or "")
        assert "input_size" in (got[negative[0]].error or "")
        assert "traits" in (got[no_traits[0]].error or "")
        assert "65536" in (got[oversize[0]].error or "")
        assert "deadline" in (got[expired[0]].error or "")
        assert got[good_cid].status is SelectionStatus.OK
        assert got[good_cid].candidates[0].executor_id == executor

        dead = {k.decode(): v for k, v in collector.letters.items()}
        assert "JSON" in dead[f"garbage-{uid}"].reason
        assert dead[f"garbage-{uid}"].original_value == letters[f"garbage-{uid}"]
        assert "reply_topic" in dead[f"anon-{uid}"].reason
        assert f"no-such-topic-{uid}" in dead[f"nowhere-{uid}"].reason
        assert "999" in dead[f"farpart-{uid}"].reason
        for letter in dead.values():
            assert letter.topic == requests
            assert letter.consumer_group
            assert selector.selector_id in letter.consumer_group
        # A missing reply topic must not stall the loop for Kafka's metadata timeout.
        assert took < 10, f"bad requests held up serving for {took:.1f}s"
        assert selector.ready
    await state.deregister(executor)


async def test_null_status_record_is_dead_lettered_not_taken_for_a_client_tombstone(
    infra: Infra, catalog: Catalog, prefix: str, producer: Producer
) -> None:
    state = State(producer, catalog)
    traits = _traits()
    uid = _uid()
    executor, client = f"nul-{uid}", f"nul-client-{uid}"
    async with (
        _selector(infra, catalog, prefix, group=_group()) as selector,
        Collector(infra, catalog, 0) as collector,
    ):
        await state.client(client)
        await state.register(registration(executor, traits=traits))
        await state.latency(executor, client, 7.0)
        await _until(
            lambda: (e := selector.view.get(executor)) is not None and client in e.probes,
            10,
            "the probe",
        )
        # A null value on a delete-policy topic, keyed like a client id: junk, not a
        # tombstone (only the registration topics are compacted).
        await producer.send_and_wait(catalog.name(Topic.EXECUTOR_STATUS), None, key=client)
        await collector.wait(letters=[client])
        letter = collector.letters[client.encode()]
        assert letter.topic == catalog.name(Topic.EXECUTOR_STATUS)
        assert "empty record" in letter.reason
        assert any(c.client_id == client for c in selector.view.clients())
        entry = selector.view.get(executor)
        assert entry is not None
        assert entry.probes[client] == 7.0
    await state.deregister(executor)


def _private_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    # A second real Redis this test may kill: the session's must stay up for the others.
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    return subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


async def test_store_outage_is_bounded_then_the_view_is_rewritten(
    infra: Infra, catalog: Catalog, producer: Producer, tmp_path: Path
) -> None:
    state = State(producer, catalog)
    traits = _traits()
    uid = _uid()
    port = free_port()
    redis_proc = _private_redis(port, tmp_path)
    url = f"redis://127.0.0.1:{port}/0"
    sid = f"sel-{uid}"
    selector = Selector(
        infra.kafka(sid),
        catalog,
        ViewStore(url, key_prefix="outage:", connect_timeout_s=0.5, timeout_s=1.0),
        selector_id=sid,
        group_id=_group(),
        grace_s=2.0,
        max_pending_store_events=20,
    )
    try:
        await _until_async(lambda: _redis_up(url), 10, "the private redis")
        async with selector:
            await state.register(registration(f"out-{uid}", traits=traits))
            await state.status(f"out-{uid}")
            async with ViewStore(url, key_prefix="outage:") as check:
                await _until_async(lambda: _has(check, {f"out-{uid}"}), 10, "the store")

            redis_proc.terminate()
            redis_proc.wait(10)
            for _ in range(40):  # more than the bound, while the store is down
                await state.status(f"out-{uid}")
            await _until(lambda: selector.store_resync_pending, 20, "the backlog bound")
            # The in-memory view keeps serving while the store is down.
            async with _requester(infra, catalog) as requester:
                reply = await requester.request(_ask("c", traits))
            assert reply.status is SelectionStatus.OK

            redis_proc = _private_redis(port, tmp_path)  # empty: it kept nothing
            await _until_async(lambda: _redis_up(url), 10, "the restarted redis")
            await state.status(f"out-{uid}")  # any state record triggers a flush
            await _until(lambda: not selector.store_resync_pending, 20, "the rewrite")
            async with ViewStore(url, key_prefix="outage:") as check:
                snapshot = await check.load()
            rewritten = snapshot.executors[f"out-{uid}"]
            assert rewritten.age_s is not None  # alive
            assert rewritten.status is not None
            assert rewritten.status.model_state is ModelState.AVAILABLE
    finally:
        redis_proc.kill()
        redis_proc.wait(10)


async def _redis_up(url: str) -> bool:
    try:
        async with ViewStore(url, key_prefix="probe:", connect_timeout_s=0.2):
            pass  # start() pings
    except MulambdaError:
        return False
    return True
